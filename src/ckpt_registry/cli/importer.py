"""`ckpt import`: register checkpoints that other tools wrote to disk."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..client import Client, ConflictError, UnprocessableEntityError
from .output import APIGroup, Format, console, echo_json, format_options, with_client

__all__ = ["import_group", "read_trainer_checkpoints"]

CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")


class CorruptCheckpoint(Exception):
    """A checkpoint folder whose trainer_state.json cannot be read as the Trainer writes it."""


@dataclass(frozen=True, slots=True)
class TrainerCheckpoint:
    step: int
    folder: Path


@dataclass
class ImportReport:
    registered: list[int] = field(default_factory=list)
    already_present: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def read_trainer_checkpoints(output_dir: Path) -> list[TrainerCheckpoint]:
    """The ``checkpoint-N`` folders of a Trainer output directory, by step."""
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append(TrainerCheckpoint(int(match.group(1)), path))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def metrics_at_step(folder: Path, step: int) -> dict[str, float]:
    """The metrics the Trainer logged at ``step``, from ``folder/trainer_state.json``.

    Every ``log_history`` entry for the step is merged (training and evaluation logs are
    separate entries); only finite numbers are kept, and the ``step`` key itself is dropped.
    """
    state_file = folder / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptCheckpoint("trainer_state.json is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptCheckpoint(f"trainer_state.json is unreadable: {exc}") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise CorruptCheckpoint("trainer_state.json has no log_history list")
    metrics: dict[str, float] = {}
    for entry in history:
        if not isinstance(entry, dict) or entry.get("step") != step:
            continue
        for name, value in entry.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                metrics[name] = float(value)
    return metrics


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
Example:
  ckpt import hf-trainer ./outputs/run-3 --model 0b9e6c1e-...

\b
Exit status: 0 when every checkpoint folder is registered or already
present; 1 when any folder was skipped (missing or corrupt
trainer_state.json, or the step is registered with other metrics), so
scripts notice; the skipped folders are listed on stderr.""",
)
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_id", required=True, help="The model to register them under.")
@format_options()
@with_client
def import_hf_trainer(client: Client, output_dir: Path, model_id: str, fmt: Format) -> None:
    """Register every checkpoint-N folder of a Hugging Face Trainer OUTPUT_DIR as step N, with
    the metrics logged at step N in that folder's trainer_state.json.

    Safe to re-run: a step already registered with the same metrics counts as already present.
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
            _import_one(client, model_id, checkpoint, report, err)
            progress.advance(task)
    if fmt != "table":
        echo_json(report)
    else:
        console().print(
            f"{len(report.registered)} registered, {len(report.already_present)} already "
            f"present, {len(report.skipped)} skipped ({len(found)} checkpoint folders)."
        )
    if report.skipped:
        click.get_current_context().exit(1)


def _import_one(
    client: Client,
    model_id: str,
    checkpoint: TrainerCheckpoint,
    report: ImportReport,
    err: Console,
) -> None:
    # Metrics are read completely before anything is sent, so a bad folder is never half-imported.
    # Errors that concern only this folder skip it; any other (unknown model, bad key, server
    # down) stops the import, since every other folder would fail the same way.
    name = checkpoint.folder.name
    try:
        metrics = metrics_at_step(checkpoint.folder, checkpoint.step)
        registered = client.checkpoints.register(model_id, step=checkpoint.step, metrics=metrics)
    except CorruptCheckpoint as exc:
        reason = str(exc)
    except (ConflictError, UnprocessableEntityError) as exc:
        reason = exc.message
    else:
        (report.registered if registered.created else report.already_present).append(
            checkpoint.step
        )
        return
    report.skipped.append({"step": checkpoint.step, "folder": name, "reason": reason})
    err.print(f"Skipped {name}: {reason}")
