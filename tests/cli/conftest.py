"""Fixtures for the CLI tests: `ckpt` run in process against a real server, an SDK client beside it.

`ckpt serve` run in process (CliRunner) sets `CKPT_*` variables for its uvicorn workers: the
environment is put back after each test, so no later test's server inherits another test's settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result

from ckpt_registry.cli.main import cli
from ckpt_registry.client import Client

Ckpt = Callable[..., Result]


@pytest.fixture(autouse=True)
def restored_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def ckpt_command(
    server_url: str, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Ckpt]:
    """``ckpt_command("checkpoints")`` runs ``ckpt checkpoints ARGS...`` with the key and URL in
    the environment, as a user's shell has them."""
    monkeypatch.setenv("CKPT_API_KEY", api_key)
    monkeypatch.setenv("CKPT_BASE_URL", server_url)

    def command(*prefix: str) -> Ckpt:
        def run(*args: str, input: str | None = None) -> Result:
            return CliRunner().invoke(cli, [*prefix, *args], input=input)

        return run

    return command


@pytest.fixture
def sdk(server_url: str, api_key: str) -> Iterator[Client]:
    with Client(api_key=api_key, base_url=server_url) as client:
        yield client
