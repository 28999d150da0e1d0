"""`ckpt models`: create, list, inspect and delete models through the SDK."""

from __future__ import annotations

from typing import Any

import click

from ..client import Client
from ..contract import LIST_LIMIT_MAX, LIST_LIMIT_MIN, LIST_ORDER_DEFAULT, LIST_ORDERS
from .output import (
    APIGroup,
    Format,
    console,
    echo_json,
    format_options,
    print_model,
    print_models,
    with_client,
)

__all__ = ["models"]


@click.group(cls=APIGroup, epilog="Example: ckpt models list --project rl")
def models() -> None:
    """Create, list, inspect and delete models (talks to a running registry).

    MODEL is a model id or PROJECT/NAME (e.g. rl/agent-7)."""


@models.command(
    "create",
    epilog="Example: ckpt models create --project rl --name agent-7 --base-model Qwen/Qwen2.5-7B",
)
@click.option("--project", required=True, help="The project the model belongs to.")
@click.option("--name", required=True, help="Unique among the project's live models.")
@click.option("--base-model", required=True, help="The model it is trained from.")
@click.option("--entity", help="Defaults to the API key's entity.")
@click.option(
    "--return-existing",
    is_flag=True,
    help="If the name is taken, print that model instead of failing with 409.",
)
@format_options()
@with_client
def create_model(
    client: Client,
    project: str,
    name: str,
    base_model: str,
    entity: str | None,
    return_existing: bool,
    fmt: Format,
) -> None:
    """Create a model and print it (its id is what the checkpoint commands take)."""
    model = client.models.create(
        project=project,
        name=name,
        base_model=base_model,
        entity=entity,
        return_existing=return_existing,
    )
    if fmt == "table":
        print_model(model)
    else:
        echo_json(model)


@models.command(
    "list",
    epilog="Example: ckpt models list --project rl --order desc --ndjson",
)
@click.option("--project", help="Only this project's models.")
@click.option(
    "--order", type=click.Choice(LIST_ORDERS), default=LIST_ORDER_DEFAULT, show_default=True
)
@click.option(
    "--limit",
    type=click.IntRange(LIST_LIMIT_MIN, LIST_LIMIT_MAX),
    default=LIST_LIMIT_MAX,
    show_default=True,
    help="Models per request.",
)
@format_options(ndjson=True)
@with_client
def list_models(client: Client, project: str | None, order: Any, limit: int, fmt: Format) -> None:
    """List every model of the key's entity, oldest first (walks all pages)."""
    everything = client.models.list(project=project, order=order, limit=limit)
    if fmt == "ndjson":
        for model in everything:
            echo_json(model)
    elif fmt == "json":
        echo_json(list(everything))
    else:
        print_models(everything)


@models.command("get", epilog="Example: ckpt models get 0b9e6c1e-...")
@click.argument("model_id", metavar="MODEL")
@format_options()
@with_client
def get_model(client: Client, model_id: str, fmt: Format) -> None:
    """Show one model."""
    model = client.models.get(model_id)
    if fmt == "table":
        print_model(model)
    else:
        echo_json(model)


@models.command("delete", epilog="Example: ckpt models delete 0b9e6c1e-... --yes")
@click.argument("model_id", metavar="MODEL")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@format_options()
@with_client
def delete_model(client: Client, model_id: str, yes: bool, fmt: Format) -> None:
    """Delete a model and all of its checkpoints."""
    if not yes:
        click.confirm(f"Delete model {model_id} and all its checkpoints?", abort=True, err=True)
    deleted = client.models.delete(model_id)
    if fmt == "table":
        console().print(
            f"Deleted model {deleted.model_id} and {deleted.deleted_checkpoints} checkpoint(s)."
        )
    else:
        echo_json(deleted)
