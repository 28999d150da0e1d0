"""What the SDK-backed commands share: the client options, one-line errors, and rendering
(Rich tables for people, JSON and NDJSON for scripts)."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import click
from rich.console import Console
from rich.table import Table

from ..client import (
    DEFAULT_BASE_URL,
    APIConnectionError,
    APITimeoutError,
    Checkpoint,
    CheckpointDetail,
    CkptError,
    Client,
    CursorPage,
    Model,
)

__all__ = [
    "APIGroup",
    "Format",
    "console",
    "echo_json",
    "find_model",
    "format_options",
    "print_checkpoint",
    "print_model",
    "print_models",
    "resolve_model",
    "stream_checkpoints",
    "to_json",
    "with_client",
]

Format = Literal["table", "json", "ndjson"]

MISSING_API_KEY = "No API key: pass --api-key or set CKPT_API_KEY (`ckpt keys create` makes one)."

# The ids the API hands out; anything else with a '/' is read as PROJECT/NAME.
_MODEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def find_model(client: Client, ref: str) -> Model | None:
    """The model ``ref`` names as ``PROJECT/NAME`` (None when there is none). Both parts may
    hold '/' themselves: every split is tried, and one that matches two models is an error."""
    found = []
    for cut in (i for i, char in enumerate(ref) if char == "/"):
        project, name = ref[:cut], ref[cut + 1 :]
        if project and name and (model := client.models.find(project=project, name=name)):
            found.append(model)
    if len(found) > 1:
        names = ", ".join(f"project {m.project!r} name {m.name!r}" for m in found)
        raise click.ClickException(f"{ref} names more than one model ({names}): use its id")
    return found[0] if found else None


def resolve_model(client: Client, ref: str) -> str:
    """The id of the model ``ref`` names: a model id as it is, or ``PROJECT/NAME`` looked up
    among the key's entity's models."""
    if _MODEL_ID.fullmatch(ref) or "/" not in ref:
        return ref  # an id; an unknown one is the API's 404 "Model not found"
    model = find_model(client, ref)
    if model is None:
        raise click.ClickException(
            f"No model {ref} (PROJECT/NAME) for this key: `ckpt models list`"
        )
    return model.id


class APIGroup(click.Group):
    """A group whose commands report API failures as one line on stderr (``Error: 404 Model not
    found``) and exit 1, never with a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except APITimeoutError as exc:
            raise click.ClickException(f"{exc.message} (is the server overloaded?)") from exc
        except APIConnectionError as exc:
            raise click.ClickException(
                f"{exc.message} (is the server running? check --base-url or CKPT_BASE_URL)"
            ) from exc
        except CkptError as exc:
            raise click.ClickException(exc.message) from exc


def with_client(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--api-key`` and ``--base-url`` to a command and hand it a ``client``; a
    ``model_id`` argument may be given as an id or as ``PROJECT/NAME`` and reaches the command
    as the id."""

    @click.option(
        "--api-key",
        envvar="CKPT_API_KEY",
        help="API key (env CKPT_API_KEY).",
    )
    @click.option(
        "--base-url",
        envvar="CKPT_BASE_URL",
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="The registry's URL, ending in /v1 (env CKPT_BASE_URL).",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, api_key: str | None, base_url: str, **kwargs: Any) -> Any:
        if not api_key:
            raise click.ClickException(MISSING_API_KEY)
        client = click.get_current_context().with_resource(
            Client(api_key=api_key, base_url=base_url)
        )
        if isinstance(kwargs.get("model_id"), str):
            kwargs["model_id"] = resolve_model(client, kwargs["model_id"])
        return command(*args, client=client, **kwargs)

    return wrapper


def format_options(*, ndjson: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--json`` (and with ``ndjson``, ``--ndjson``), passed to the command as ``fmt``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--json", "fmt", flag_value="json", help="Print JSON instead of a table."
        )(command)
        if ndjson:
            command = click.option(
                "--ndjson", "fmt", flag_value="ndjson", help="Print one JSON object per line."
            )(command)
        return click.option("--table", "fmt", flag_value="table", default=True, hidden=True)(
            command
        )

    return decorate


def console(*, stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr); wide when piped, so tables never truncate."""
    stream = sys.stderr if stderr else sys.stdout
    # Names and ids come from users: no markup or emoji codes may be interpreted in them.
    return Console(
        file=stream,
        width=None if stream.isatty() else 1000,
        highlight=False,
        markup=False,
        emoji=False,
    )


def to_json(value: Any) -> Any:
    """``value`` (SDK results, lists of them) as plain JSON data; timestamps as ISO 8601 UTC."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(to_json(value)))


def _number(value: float) -> str:
    return f"{value:.6g}"


def print_model(model: Model) -> None:
    print_models([model])


def print_models(models: Iterable[Model]) -> None:
    table = Table("id", "entity", "project", "name", "base_model")
    for model in models:
        table.add_row(model.id, model.entity, model.project, model.name, model.base_model)
    console().print(table)


def print_checkpoint(checkpoint: Checkpoint | CheckpointDetail) -> None:
    """One checkpoint as a two-column table, a row per field and per metric."""
    table = Table("field", "value")
    table.add_row("id", checkpoint.id)
    table.add_row("step", str(checkpoint.step))
    if isinstance(checkpoint, CheckpointDetail):
        table.add_row("created_at", to_json(checkpoint.created_at))
        table.add_row("updated_at", to_json(checkpoint.updated_at))
    for name, value in checkpoint.metrics.items():
        table.add_row(name, _number(value))
    console().print(table)


def stream_checkpoints(page: CursorPage[Checkpoint], fmt: Format, *, every_page: bool) -> None:
    """Print ``page`` (and with ``every_page`` each page after it) as each page arrives, so a
    long walk never sits in memory: NDJSON lines, a streamed JSON array, or table rows."""
    pages: Iterator[CursorPage[Checkpoint]] = page.iter_pages() if every_page else iter([page])
    if fmt == "ndjson":
        for current in pages:
            for checkpoint in current.data:
                echo_json(checkpoint)
    elif fmt == "json":
        click.echo("[", nl=False)
        first = True
        for current in pages:
            for checkpoint in current.data:
                click.echo(("" if first else ",") + json.dumps(to_json(checkpoint)), nl=False)
                first = False
        click.echo("]")
    else:
        _stream_table(pages)
        if not every_page and page.has_next_page():
            console(stderr=True).print(
                f"More checkpoints follow: --all lists every page, "
                f"--after {page.data[-1].id} the next one."
            )


def _stream_table(pages: Iterator[CursorPage[Checkpoint]]) -> None:
    # One table per page; the header is printed again only when new metric columns appear.
    # Fixed minimum widths keep the columns of consecutive pages aligned.
    out = console()
    columns: list[str] = []
    printed_header = False
    for current in pages:
        new = [name for c in current.data for name in c.metrics if name not in columns]
        columns.extend(dict.fromkeys(new))
        table = Table(box=None, show_header=bool(new) or not printed_header, pad_edge=False)
        table.add_column("step", justify="right", min_width=8)
        table.add_column("id", min_width=36)
        for name in columns:
            table.add_column(name, justify="right", min_width=max(len(name), 12))
        for checkpoint in current.data:
            values = checkpoint.metrics
            table.add_row(
                str(checkpoint.step),
                checkpoint.id,
                *(_number(values[name]) if name in values else "-" for name in columns),
            )
        if current.data or not printed_header:
            out.print(table)
            printed_header = True
