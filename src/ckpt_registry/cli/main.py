"""`ckpt`: models, checkpoints and imports over the SDK; `serve`, `db` and `keys` on the server's
database, loaded only when one of them runs, so a client-only install never imports the server."""

from __future__ import annotations

import importlib
from typing import Any

import click

from .checkpoints import checkpoints
from .importer import import_group
from .models import models

__all__ = ["SERVER_EXTRA_HINT", "cli"]

# The commands of cli/server.py and what each is about, shown by `ckpt --help` even when the
# server part is not installed.
SERVER_COMMANDS = {
    "serve": "Migrate the database, make a first key if there is none, and serve the API.",
    "db": "Create, upgrade and clean the database.",
    "keys": "Create, list and revoke API keys (stored only as sha256 hashes).",
}

# The top-level packages of the `[server]` extra: missing one means a client-only install.
SERVER_PACKAGES = frozenset(
    {
        "alembic",
        "asyncpg",
        "fastapi",
        "orjson",
        "prometheus_client",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "sqlalchemy",
        "starlette",
        "uvicorn",
    }
)

SERVER_EXTRA_HINT = (
    "`ckpt {command}` needs the server, which this install does not have (no module {module!r}): "
    "pip install 'ckpt-registry[server]'"
)


class CLI(click.Group):
    """The `ckpt` group: client commands imported at start, server commands on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SERVER_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SERVER_COMMANDS:
            return super().get_command(ctx, cmd_name)
        try:
            server = importlib.import_module(".server", __package__)
        except ModuleNotFoundError as exc:
            module = (exc.name or "").partition(".")[0]
            if module not in SERVER_PACKAGES:
                raise
            return _missing_server(cmd_name, module)
        command: click.Command = getattr(server, cmd_name)
        return command


def _missing_server(name: str, module: str) -> click.Command:
    """A stand-in for a server command that says what to install, whatever it is given."""

    def explain(**_: Any) -> None:
        raise click.ClickException(SERVER_EXTRA_HINT.format(command=name, module=module))

    return click.Command(
        name,
        callback=explain,
        help=f"{SERVER_COMMANDS[name]} (needs: pip install 'ckpt-registry[server]')",
        short_help=f"{SERVER_COMMANDS[name]} [needs the server extra]",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


@click.group(
    cls=CLI,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: ckpt serve, then ckpt models create --project rl --name agent-7 --base-model Qwen/Qwen2.5-7B",
)
@click.version_option(package_name="ckpt-registry")
def cli() -> None:
    """ckpt-registry: a self-hostable model checkpoint registry (W&B Training compatible)."""


cli.add_command(models)
cli.add_command(checkpoints)
cli.add_command(import_group)
