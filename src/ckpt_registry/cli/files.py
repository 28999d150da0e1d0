"""`ckpt checkpoints upload | download | files`: a checkpoint's weights, over the SDK's transfers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..client import Client, TransferProgress
from ..client.resources.checkpoints import Best
from ..client.transfers import DEFAULT_PARALLEL, ProgressCallback
from .checkpoints import parse_metrics
from .output import Format, console, echo_json, format_options, with_client

__all__ = ["download", "files", "parse_best", "upload"]

PARALLEL = click.IntRange(1, 64)


def parse_best(raw: str) -> Best:
    """``METRIC`` or ``METRIC:min`` / ``METRIC:max``, split from the right so a metric's name
    may contain ':'. Without a mode it is ``max``, and the command says so."""
    metric, sep, mode = raw.rpartition(":")
    if sep and metric and mode in ("min", "max"):
        return (metric, "min" if mode == "min" else "max")
    return (raw, "max")


@contextmanager
def progress_bar(enabled: bool | None, fmt: Format, verb: str) -> Iterator[ProgressCallback | None]:
    """A Rich progress bar on stderr (bytes, rate, time left) fed by the SDK's progress hook;
    on by default only on a terminal without --json, forced on or off with --progress."""
    if enabled is None:
        enabled = fmt == "table" and sys.stderr.isatty()
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
    )
    task = bar.add_task(verb, total=None)

    def update(event: TransferProgress) -> None:
        bar.update(
            task,
            total=event.bytes_total,
            completed=event.bytes_done,
            description=f"{verb} {event.files_done}/{event.files_total} files",
        )

    with bar:
        yield update


def _progress_option(command: Any) -> Any:
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Show a progress bar on stderr (default: when it is a terminal and not --json).",
    )(command)


def _parallel_option(command: Any) -> Any:
    return click.option(
        "--parallel",
        type=PARALLEL,
        default=DEFAULT_PARALLEL,
        show_default=True,
        help="Files moved at once.",
    )(command)


@click.command(
    "upload",
    epilog="""\b
Examples:
  ckpt checkpoints upload 0b9e6c1e-... --step 500 ./checkpoint-500 --metric loss=0.42
  ckpt checkpoints upload 0b9e6c1e-... --step 500 ./model.safetensors --json""",
)
@click.argument("model_id")
@click.option("--step", type=click.IntRange(min=0), required=True)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--metric", "metric_pairs", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--metrics-json", metavar="JSON", help="All metrics as one JSON object.")
@_parallel_option
@_progress_option
@format_options()
@with_client
def upload(
    client: Client,
    model_id: str,
    step: int,
    path: Path,
    metric_pairs: tuple[str, ...],
    metrics_json: str | None,
    parallel: int,
    progress: bool | None,
    fmt: Format,
) -> None:
    """Upload a folder (or one file) as the checkpoint at STEP, registering the step when it is
    missing (metrics it lacks are added to a registered one). Files the registry holds already
    send no byte; a dropped connection resumes."""
    metrics = parse_metrics(metric_pairs, metrics_json)
    with progress_bar(progress, fmt, "Uploading") as hook:
        saved = client.checkpoints.save(
            model_id, step=step, path=path, metrics=metrics, parallel=parallel, progress=hook
        )
    if fmt != "table":
        echo_json(saved)
        return
    result = saved.upload
    registered = {
        "registered": "Registered",
        "present": "Found",
        "merged": "Found (metrics added to)",
    }[saved.outcome]
    out = console()
    out.print(f"{registered} step {step}: checkpoint {saved.checkpoint.id}.")
    out.print(
        f"Sent {result.files_sent} file(s), {decimal(result.bytes_sent)}; "
        f"skipped {result.files_skipped} already in the registry, {decimal(result.bytes_skipped)}."
    )


@click.command(
    "download",
    epilog="""\b
Examples:
  ckpt checkpoints download 0b9e6c1e-... --best eval_loss:min ./best
  ckpt checkpoints download 0b9e6c1e-... --latest ./latest
  ckpt checkpoints download 0b9e6c1e-... --step 500 ./checkpoint-500 --json""",
)
@click.argument("model_id")
@click.option("--step", type=click.IntRange(min=0), help="The checkpoint at this step.")
@click.option("--checkpoint-id", help="The checkpoint with this id.")
@click.option("--latest", is_flag=True, help="The checkpoint with the highest step.")
@click.option(
    "--best",
    metavar="METRIC[:min|max]",
    help="The best checkpoint by METRIC: its lowest value with :min (a loss), highest with :max "
    "(the default, said on stderr).",
)
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@_parallel_option
@_progress_option
@format_options()
@with_client
def download(
    client: Client,
    model_id: str,
    step: int | None,
    checkpoint_id: str | None,
    latest: bool,
    best: str | None,
    dest: Path,
    parallel: int,
    progress: bool | None,
    fmt: Format,
) -> None:
    """Download one checkpoint's files into DEST: each is checked against its sha256 before it
    takes its name, and files DEST already has (same size and sha256) are not fetched again."""
    chosen = sum((step is not None, checkpoint_id is not None, latest, best is not None))
    if chosen != 1:
        raise click.UsageError(
            "Name the checkpoint with one of --step, --checkpoint-id, --latest, --best."
        )
    by_best = None
    if best is not None:
        by_best = parse_best(best)
        if not best.endswith((":min", ":max")):
            console(stderr=True).print(
                f"Best by {by_best[0]} is its highest value (max); add :min for a loss."
            )
    with progress_bar(progress, fmt, "Downloading") as hook:
        result = client.checkpoints.download(
            model_id,
            dest,
            step=step,
            checkpoint_id=checkpoint_id,
            latest=latest,
            best=by_best,
            parallel=parallel,
            progress=hook,
        )
    if fmt != "table":
        echo_json(result)
        return
    out = console()
    out.print(f"Step {result.checkpoint.step} (checkpoint {result.checkpoint.id}) in {dest}:")
    out.print(
        f"downloaded {len(result.downloaded)} file(s), {decimal(result.bytes_downloaded)}; "
        f"{len(result.skipped)} already there, {decimal(result.bytes_skipped)}."
    )


@click.command("files", epilog="Example: ckpt checkpoints files 0b9e6c1e-... --step 500 --json")
@click.argument("model_id")
@click.option("--step", type=click.IntRange(min=0), help="The checkpoint at this step.")
@click.option("--checkpoint-id", help="The checkpoint with this id.")
@format_options()
@with_client
def files(
    client: Client, model_id: str, step: int | None, checkpoint_id: str | None, fmt: Format
) -> None:
    """List a checkpoint's files: path, size and sha256, in path order."""
    if (step is None) == (checkpoint_id is None):
        raise click.UsageError("Name the checkpoint with --step or --checkpoint-id.")
    found = client.checkpoints.list_files(model_id, step=step, checkpoint_id=checkpoint_id)
    if fmt != "table":
        echo_json(found)
        return
    table = Table("path", "size", "sha256")
    for info in found:
        table.add_row(info.path, decimal(info.size_bytes), info.sha256)
    out = console()
    out.print(table)
    out.print(f"{len(found)} file(s), {decimal(sum(info.size_bytes for info in found))}.")
