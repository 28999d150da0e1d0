"""`--help` on every command shows an example."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from ckpt_registry.cli.main import cli


def command_paths(command: click.Command, path: list[str]) -> Iterator[list[str]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from command_paths(sub, [*path, name])


@pytest.mark.parametrize(
    "path", list(command_paths(cli, [])), ids=lambda path: " ".join(path) or "ckpt"
)
def test_every_command_shows_an_example(path: list[str]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
