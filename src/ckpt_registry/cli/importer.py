"""`ckpt import`: register checkpoints that other tools wrote to disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..client import Client, ConflictError, FileConflictError, UnprocessableEntityError
from ..integrations.hf_trainer import (
    CorruptCheckpoint,
    MetricConflict,
    TrainerCheckpoint,
    metrics_at_step,
    read_trainer_checkpoints,
    register_or_merge,
)
from .output import APIGroup, Format, console, echo_json, format_options, with_client

__all__ = ["import_group"]


@dataclass
class ImportReport:
    registered: list[int] = field(default_factory=list)
    already_present: list[int] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)  # registered before; metrics it lacked added
    skipped: list[dict[str, Any]] = field(default_factory=list)
    # With --with-files: step -> files its checkpoint holds from the folder, and of those the
    # ones that sent no byte (the checkpoint had them, or the entity held the same content).
    uploaded: dict[int, int] = field(default_factory=dict)
    already_uploaded: dict[int, int] = field(default_factory=dict)


@click.group(
    "import",
    cls=APIGroup,
    epilog="Example: ckpt import hf-trainer ./outputs/run-3 --model 0b9e6c1e-...",
)
def import_group() -> None:
    """Register checkpoints that a training framework wrote to disk."""


@import_group.command(
    "hf-trainer",
    epilog="""\b
Examples:
  ckpt import hf-trainer ./outputs/run-3 --model 0b9e6c1e-...
  ckpt import hf-trainer ./outputs/run-3 --model 0b9e6c1e-... --with-files

\b
Exit status: 0 when every checkpoint folder is registered, merged or
already present (and, with --with-files, its files uploaded); 1 when any
folder was skipped (missing or corrupt trainer_state.json, a metric
registered with another value, files the server refused), so scripts
notice; the skipped folders are listed on stderr.""",
)
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_id", required=True, help="The model to register them under.")
@click.option(
    "--with-files",
    is_flag=True,
    help="Also upload each checkpoint folder's files (weights, optimizer, tokenizer...).",
)
@click.option(
    "--include-timing",
    is_flag=True,
    help="Also import timing metrics (*_runtime, *_per_second), left out by default: they "
    "differ on every run.",
)
@format_options()
@with_client
def import_hf_trainer(
    client: Client,
    output_dir: Path,
    model_id: str,
    with_files: bool,
    include_timing: bool,
    fmt: Format,
) -> None:
    """Register every checkpoint-N folder of a Hugging Face Trainer OUTPUT_DIR as step N, with
    the metrics logged at step N in that folder's trainer_state.json.

    Safe to re-run: a step already registered gets the metrics it lacks (equal values are fine;
    another value for a metric it has is reported, naming both), and files already uploaded
    are accepted as they are.
    """
    found = read_trainer_checkpoints(output_dir)
    if not found:
        raise click.ClickException(f"No checkpoint-N folders in {output_dir}")
    report = ImportReport()
    err = console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        # A bar in a log file is noise: show it only to a person at a terminal.
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("Importing", total=len(found))
        for checkpoint in found:
            _import_one(client, model_id, checkpoint, report, err, with_files, include_timing)
            progress.advance(task)
    if fmt != "table":
        echo_json(report)
    else:
        line = (
            f"{len(report.registered)} registered, {len(report.already_present)} already "
            f"present, {len(report.merged)} merged, {len(report.skipped)} skipped "
            f"({len(found)} checkpoint folders)."
        )
        if with_files:
            held = sum(report.already_uploaded.values())
            line += (
                f" {sum(report.uploaded.values())} files uploaded"
                f" ({held} of them already in the registry, no bytes sent)."
            )
        console().print(line)
    if report.skipped:
        click.get_current_context().exit(1)


def _import_one(
    client: Client,
    model_id: str,
    checkpoint: TrainerCheckpoint,
    report: ImportReport,
    err: Console,
    with_files: bool,
    include_timing: bool,
) -> None:
    # Metrics are read completely before anything is sent, so a bad folder is never half-imported.
    # Errors that concern only this folder skip it; any other (unknown model, bad key, server
    # down) stops the import, since every other folder would fail the same way.
    name = checkpoint.folder.name
    try:
        metrics = metrics_at_step(checkpoint.folder, checkpoint.step, include_timing=include_timing)
        result = register_or_merge(client, model_id, checkpoint.step, metrics)
    except (CorruptCheckpoint, MetricConflict) as exc:
        reason = str(exc)
    except UnprocessableEntityError as exc:
        reason = exc.message
    else:
        {
            "registered": report.registered,
            "present": report.already_present,
            "merged": report.merged,
        }[result.outcome].append(checkpoint.step)
        if not with_files:
            return
        try:
            sent = client.checkpoints.upload(
                model_id, checkpoint.folder, checkpoint_id=result.checkpoint.id
            )
        except (ConflictError, FileConflictError, UnprocessableEntityError) as exc:
            reason = f"files: {exc.message}"
        else:
            report.uploaded[checkpoint.step] = sent.files_sent + sent.files_skipped
            report.already_uploaded[checkpoint.step] = sent.files_skipped
            return
    report.skipped.append({"step": checkpoint.step, "folder": name, "reason": reason})
    err.print(f"Skipped {name}: {reason}")
