"""`ckpt models ...` against a real server, as a user runs them."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from typing import Any

import click
import pytest
from click.testing import CliRunner

from ckpt_registry.cli.checkpoints import checkpoints
from ckpt_registry.cli.importer import import_group
from ckpt_registry.cli.main import cli
from ckpt_registry.cli.models import models

from .conftest import Ckpt


@pytest.fixture
def ckpt(ckpt_command: Callable[..., Ckpt]) -> Ckpt:
    return ckpt_command()


def create(ckpt: Ckpt, name: str = "agent", project: str = "rl") -> dict[str, Any]:
    result = ckpt(
        "models", "create", "--project", project, "--name", name, "--base-model", "b", "--json"
    )
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_create_prints_a_table_with_the_new_model(ckpt: Ckpt) -> None:
    result = ckpt("models", "create", "--project", "rl", "--name", "agent", "--base-model", "Qwen")

    assert result.exit_code == 0, result.output
    for text in ("id", "entity", "default", "rl", "agent", "Qwen"):
        assert text in result.stdout


def test_create_json_then_a_taken_name_fails_in_one_line(ckpt: Ckpt) -> None:
    model = create(ckpt)

    taken = ckpt("models", "create", "--project", "rl", "--name", "agent", "--base-model", "b")
    existing = ckpt(
        "models", "create", "--project", "rl", "--name", "agent", "--base-model", "b",
        "--return-existing", "--json",
    )  # fmt: skip

    assert uuid.UUID(model["id"])
    assert (model["entity"], model["project"], model["name"]) == ("default", "rl", "agent")
    assert taken.exit_code == 1
    assert taken.stderr.startswith("Error: 409 ")
    assert len(taken.stderr.strip().splitlines()) == 1
    assert "Traceback" not in taken.output
    assert json.loads(existing.stdout)["id"] == model["id"]


def test_create_for_another_entity_is_403(ckpt: Ckpt) -> None:
    result = ckpt(
        "models", "create", "--project", "p", "--name", "n", "--base-model", "b",
        "--entity", "someone-else",
    )  # fmt: skip

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: 403 ")


def test_list_in_every_format(ckpt: Ckpt) -> None:
    ids = [create(ckpt, f"m{i}", project="a" if i % 2 else "b")["id"] for i in range(5)]

    table = ckpt("models", "list", "--limit", "2")
    as_json = ckpt("models", "list", "--limit", "2", "--json")
    ndjson = ckpt("models", "list", "--order", "desc", "--ndjson")
    filtered = ckpt("models", "list", "--project", "a", "--json")

    assert table.exit_code == 0, table.output
    assert all(model_id in table.stdout for model_id in ids)
    assert [m["id"] for m in json.loads(as_json.stdout)] == ids
    assert [json.loads(line)["id"] for line in ndjson.stdout.splitlines()] == ids[::-1]
    assert [m["id"] for m in json.loads(filtered.stdout)] == ids[1::2]


def test_get_and_its_404(ckpt: Ckpt) -> None:
    model = create(ckpt)

    shown = ckpt("models", "get", model["id"], "--json")
    missing = ckpt("models", "get", str(uuid.uuid4()))

    assert json.loads(shown.stdout) == model
    assert missing.exit_code == 1
    assert missing.stderr == "Error: 404 Model not found\n"
    assert missing.stdout == ""


def test_delete_asks_first_unless_told_yes(ckpt: Ckpt) -> None:
    model = create(ckpt)

    declined = ckpt("models", "delete", model["id"], input="n\n")
    still_there = ckpt("models", "get", model["id"])
    deleted = ckpt("models", "delete", model["id"], "--yes", "--json")
    gone = ckpt("models", "get", model["id"])

    assert declined.exit_code == 1
    assert still_there.exit_code == 0
    assert json.loads(deleted.stdout) == {
        "model_id": model["id"],
        "deleted_checkpoints": 0,
        "deleted_run": False,
    }
    assert gone.exit_code == 1


def test_a_missing_key_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKPT_API_KEY", raising=False)

    result = CliRunner().invoke(cli, ["models", "list"])

    assert result.exit_code == 1
    assert "--api-key" in result.stderr
    assert "CKPT_API_KEY" in result.stderr
    assert "ckpt keys create" in result.stderr


def test_a_bad_key_is_401(server_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["models", "list", "--api-key", "ckpt_wrong", "--base-url", server_url]
    )

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: 401 ")


def test_an_unreachable_server_is_one_line_with_a_hint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    result = CliRunner().invoke(
        cli, ["models", "list", "--api-key", "k", "--base-url", f"http://127.0.0.1:{port}/v1"]
    )

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Connection error")
    assert "--base-url" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def commands_of(group: click.Group) -> list[tuple[str, click.Command]]:
    return [(f"{group.name} {name}", command) for name, command in group.commands.items()]


@pytest.mark.parametrize(
    ("path", "command"),
    commands_of(models) + commands_of(checkpoints) + commands_of(import_group),
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_command_has_an_example_and_the_client_options(
    path: str, command: click.Command
) -> None:
    result = CliRunner().invoke(cli, [*path.split(), "--help"])

    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert f"ckpt {path}" in result.stdout
    assert "--api-key" in result.stdout
    assert "--base-url" in result.stdout
    assert command.epilog
