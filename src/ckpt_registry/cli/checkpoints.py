"""`ckpt checkpoints`: list, register, inspect, delete and prune a model's checkpoints."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from ..client import Client
from ..client.resources.checkpoints import KeepBest
from ..contract import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    LIST_LIMIT_MIN,
    LIST_ORDER_DEFAULT,
    LIST_ORDERS,
)
from .output import (
    APIGroup,
    Format,
    console,
    echo_json,
    format_options,
    print_checkpoint,
    stream_checkpoints,
    with_client,
)

__all__ = ["checkpoints", "parse_keep_best", "parse_metrics"]

ORDER = click.Choice(LIST_ORDERS)


@click.group(
    cls=APIGroup, epilog="Example: ckpt checkpoints list rl/agent-7 --order desc --limit 5"
)
def checkpoints() -> None:
    """List, register, inspect, delete and prune a model's checkpoints.

    MODEL is a model id or PROJECT/NAME (e.g. rl/agent-7)."""


def parse_metrics(pairs: tuple[str, ...], metrics_json: str | None) -> dict[str, float]:
    """``--metrics-json`` merged with ``--metric NAME=VALUE`` pairs (the pairs win)."""
    metrics: dict[str, float] = {}
    if metrics_json is not None:
        try:
            raw = json.loads(metrics_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--metrics-json") from exc
        if not isinstance(raw, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--metrics-json")
        for name, value in raw.items():
            metrics[name] = _finite(value, f"{name!r}", "--metrics-json")
    for pair in pairs:
        # A metric's name may contain '=' less often than its value never does: split the last.
        name, sep, value = pair.rpartition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--metric")
        try:
            number = float(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number", param_hint="--metric") from None
        metrics[name] = _finite(number, f"{name!r}", "--metric")
    return metrics


def _finite(value: Any, what: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise click.BadParameter(f"{what} must be a finite number", param_hint=hint)
    return float(value)


def parse_keep_best(raw: str | None) -> KeepBest | None:
    """``METRIC:MODE:K``, split from the right so metric names may contain ':'."""
    if raw is None:
        return None
    parts = raw.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise click.BadParameter(f"expected METRIC:MODE:K, got {raw!r}", param_hint="--keep-best")
    metric, mode, k = parts
    if mode not in ("max", "min"):
        raise click.BadParameter(f"MODE must be max or min, got {mode!r}", param_hint="--keep-best")
    if not k.isdigit():
        raise click.BadParameter(f"K must be an integer >= 0, got {k!r}", param_hint="--keep-best")
    return (metric, "max" if mode == "max" else "min", int(k))


@checkpoints.command(
    "list",
    epilog="""\b
Examples:
  ckpt checkpoints list 0b9e6c1e-... --order desc --limit 5
  ckpt checkpoints list 0b9e6c1e-... --ndjson > checkpoints.ndjson
  ckpt checkpoints list 0b9e6c1e-... --order desc --limit 5 --page --json

\b
--json and --ndjson are always complete: they walk every page (from
--after on); --limit is then the page size. --page --json prints one page
as the API's envelope, whose has_more and last_id say what follows.""",
)
@click.argument("model_id", metavar="MODEL")
@click.option("--order", type=ORDER, default=LIST_ORDER_DEFAULT, show_default=True, help="By step.")
@click.option(
    "--limit",
    type=click.IntRange(LIST_LIMIT_MIN, LIST_LIMIT_MAX),
    default=LIST_LIMIT_DEFAULT,
    show_default=True,
    help="Per page.",
)
@click.option("--after", help="Start after this checkpoint id (from a previous page).")
@click.option("--all", "every_page", is_flag=True, help="Table: stream every page, not just one.")
@click.option(
    "--page",
    "one_page",
    is_flag=True,
    help="With --json: only one page, as the API's envelope (has_more, last_id).",
)
@format_options(ndjson=True)
@with_client
def list_checkpoints(
    client: Client,
    model_id: str,
    order: Any,
    limit: int,
    after: str | None,
    every_page: bool,
    one_page: bool,
    fmt: Format,
) -> None:
    """List a model's checkpoints by step. The table shows one page (with --all every page as
    it arrives); --json and --ndjson always print every checkpoint."""
    if one_page and fmt != "json":
        raise click.UsageError("--page prints the API's page envelope: use it with --json.")
    page = client.checkpoints.list(model_id, order=order, limit=limit, after=after)
    if one_page:
        echo_json(
            {
                "object": "list",
                "data": page.data,
                "first_id": page.first_id,
                "last_id": page.last_id,
                "has_more": page.has_more,
            }
        )
        return
    # Machine output is complete, so a script never mistakes a first page for the whole list.
    stream_checkpoints(page, fmt, every_page=every_page or fmt != "table")


@checkpoints.command("get", epilog="Example: ckpt checkpoints get 0b9e6c1e-... 5d1f0a2b-... --json")
@click.argument("model_id", metavar="MODEL")
@click.argument("checkpoint_id")
@format_options()
@with_client
def get_checkpoint(client: Client, model_id: str, checkpoint_id: str, fmt: Format) -> None:
    """Show one checkpoint with its metrics and timestamps."""
    checkpoint = client.checkpoints.get(model_id, checkpoint_id)
    if fmt == "table":
        print_checkpoint(checkpoint)
    else:
        echo_json(checkpoint)


@checkpoints.command(
    "register",
    epilog="""\b
Examples:
  ckpt checkpoints register 0b9e6c1e-... --step 500 --metric loss=0.42 --metric val/acc=0.9
  ckpt checkpoints register 0b9e6c1e-... --step 500 --metrics-json '{"loss": 0.42}'""",
)
@click.argument("model_id", metavar="MODEL")
@click.option("--step", type=click.IntRange(min=0), required=True)
@click.option("--metric", "metric_pairs", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--metrics-json", metavar="JSON", help="All metrics as one JSON object.")
@format_options()
@with_client
def register_checkpoint(
    client: Client,
    model_id: str,
    step: int,
    metric_pairs: tuple[str, ...],
    metrics_json: str | None,
    fmt: Format,
) -> None:
    """Register a checkpoint at STEP. Registering the same step with the same metrics again
    is harmless (it prints the existing checkpoint); with other metrics it fails with 409."""
    metrics = parse_metrics(metric_pairs, metrics_json)
    checkpoint = client.checkpoints.register(model_id, step=step, metrics=metrics)
    if fmt != "table":
        echo_json(checkpoint)
        return
    console(stderr=True).print(
        f"Registered step {step}."
        if checkpoint.created
        else f"Step {step} was already registered with these metrics."
    )
    print_checkpoint(checkpoint)


@checkpoints.command(
    "update",
    epilog="Example: ckpt checkpoints update 0b9e6c1e-... 5d1f0a2b-... --metric eval/acc=0.93",
)
@click.argument("model_id", metavar="MODEL")
@click.argument("checkpoint_id")
@click.option("--metric", "metric_pairs", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--metrics-json", metavar="JSON", help="The metrics as one JSON object.")
@format_options()
@with_client
def update_checkpoint(
    client: Client,
    model_id: str,
    checkpoint_id: str,
    metric_pairs: tuple[str, ...],
    metrics_json: str | None,
    fmt: Format,
) -> None:
    """Merge metrics into a checkpoint's (e.g. evaluations that finished after it was saved):
    new names are added, existing names overwritten."""
    metrics = parse_metrics(metric_pairs, metrics_json)
    if not metrics:
        raise click.UsageError("Give at least one --metric or --metrics-json.")
    checkpoint = client.checkpoints.update_metrics(model_id, checkpoint_id, metrics)
    if fmt == "table":
        print_checkpoint(checkpoint)
    else:
        echo_json(checkpoint)


@checkpoints.command(
    "delete", epilog="Example: ckpt checkpoints delete 0b9e6c1e-... --step 100 --step 200"
)
@click.argument("model_id", metavar="MODEL")
@click.option(
    "--step", "steps", type=click.IntRange(min=0), multiple=True, required=True, help="Repeatable."
)
@format_options()
@with_client
def delete_checkpoints(client: Client, model_id: str, steps: tuple[int, ...], fmt: Format) -> None:
    """Delete the checkpoints at the given steps; steps without one are reported, not an error."""
    result = client.checkpoints.delete(model_id, steps=steps)
    if fmt != "table":
        echo_json(result)
        return
    console().print(f"Deleted {result.deleted_count} checkpoint(s).")
    if result.not_found_steps:
        console().print("Not found: steps " + ", ".join(map(str, result.not_found_steps)))


@checkpoints.command("latest", epilog="Example: ckpt checkpoints latest 0b9e6c1e-... --json")
@click.argument("model_id", metavar="MODEL")
@format_options()
@with_client
def latest_checkpoint(client: Client, model_id: str, fmt: Format) -> None:
    """Show the checkpoint with the highest step (JSON: null when there is none)."""
    checkpoint = client.checkpoints.latest(model_id)
    if fmt != "table":
        echo_json(checkpoint)
    elif checkpoint is None:
        console(stderr=True).print("The model has no checkpoints.")
    else:
        print_checkpoint(checkpoint)


@checkpoints.command(
    "best", epilog="Example: ckpt checkpoints best 0b9e6c1e-... --metric val/loss --mode min"
)
@click.argument("model_id", metavar="MODEL")
@click.option("--metric", required=True, help="The metric to rank by.")
@click.option(
    "--mode",
    type=click.Choice(["max", "min"]),
    required=True,
    help="max: the highest value is best (a reward, an accuracy); min: the lowest (a loss).",
)
@format_options()
@with_client
def best_checkpoint(client: Client, model_id: str, metric: str, mode: Any, fmt: Format) -> None:
    """Show the checkpoint with the highest (--mode max) or lowest (--mode min) METRIC; ties go
    to the later step. Fails with 404 when no checkpoint has the metric.

    --mode is required: no default can be right for both a loss and a reward, and a wrong one
    would print the worst checkpoint as the best."""
    checkpoint = client.checkpoints.best(model_id, metric=metric, mode=mode)
    if fmt == "table":
        print_checkpoint(checkpoint)
    else:
        echo_json(checkpoint)


@checkpoints.command(
    "retention",
    epilog="""\b
Example (see what would go, then do it):
  ckpt checkpoints retention 0b9e6c1e-... --keep-latest 2 --keep-best val/reward:max:3 --dry-run
  ckpt checkpoints retention 0b9e6c1e-... --keep-latest 2 --keep-best val/reward:max:3""",
)
@click.argument("model_id", metavar="MODEL")
@click.option("--keep-latest", type=click.IntRange(min=0), required=True, metavar="N")
@click.option(
    "--keep-best",
    metavar="METRIC:MODE:K",
    help="Also keep the K best by METRIC (MODE max or min); METRIC may contain ':'.",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@format_options()
@with_client
def retention(
    client: Client,
    model_id: str,
    keep_latest: int,
    keep_best: str | None,
    dry_run: bool,
    fmt: Format,
) -> None:
    """Keep the latest N checkpoints (and the K best by a metric), delete the rest.
    The latest checkpoint is never deleted."""
    result = client.checkpoints.retention(
        model_id, keep_latest=keep_latest, keep_best=parse_keep_best(keep_best), dry_run=dry_run
    )
    if fmt != "table":
        echo_json(result)
        return
    out = console()
    verb = "Would delete" if result.dry_run else "Deleted"
    out.print(f"{verb} {len(result.deleted_steps)} checkpoint(s): {_steps(result.deleted_steps)}")
    out.print(f"Kept {len(result.kept_steps)}: {_steps(result.kept_steps)}")


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if steps else "none"
