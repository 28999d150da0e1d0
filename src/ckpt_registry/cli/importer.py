"""`ckpt import`: register checkpoints that other tools wrote to disk (the work is the SDK's
``ckpt_registry.integrations.hf_trainer.import_trainer_output``; this renders it)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..client import Client
from ..integrations.hf_trainer import (
    ImportReport,
    TrainerCheckpoint,
    base_model_from_config,
    import_trainer_output,
    read_trainer_checkpoints,
)
from .output import APIGroup, Format, console, echo_json, find_model, format_options, with_client

__all__ = ["import_group"]


@click.group(
    "import",
    cls=APIGroup,
    epilog="Example: ckpt import hf-trainer ./outputs/run-3 --model hf/run-3 --create",
)
def import_group() -> None:
    """Register checkpoints that a training framework wrote to disk."""


@import_group.command(
    "hf-trainer",
    epilog="""\b
Examples:
  ckpt import hf-trainer ./outputs/run-3 --model 0b9e6c1e-...
  ckpt import hf-trainer ./outputs/run-3 --model hf/run-3 --create --with-files

\b
Exit status: 0 when every checkpoint folder is registered, merged,
already present or left deleted (and, with --with-files, its files
uploaded); 1 when any folder was skipped (missing or corrupt
trainer_state.json, a metric registered with another value, files the
server refused), so scripts notice; the skipped folders are listed on
stderr. Registered steps with no folder here are reported, not an error.""",
)
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "model_ref",
    required=True,
    metavar="MODEL",
    help="The model to register them under: its id, or PROJECT/NAME.",
)
@click.option(
    "--create",
    is_flag=True,
    help="Create the model PROJECT/NAME when there is none (base model: --base-model, else "
    "_name_or_path in the checkpoints' config.json).",
)
@click.option("--base-model", help="With --create: the model it was trained from.")
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
@click.option(
    "--include-deleted",
    is_flag=True,
    help="Also register steps that were deleted on the server (by a person or retention); "
    "left deleted by default.",
)
@format_options()
@with_client
def import_hf_trainer(
    client: Client,
    output_dir: Path,
    model_ref: str,
    create: bool,
    base_model: str | None,
    with_files: bool,
    include_timing: bool,
    include_deleted: bool,
    fmt: Format,
) -> None:
    """Register every checkpoint-N folder of a Hugging Face Trainer OUTPUT_DIR as step N, with
    the metrics logged at step N in that folder's trainer_state.json.

    Safe to re-run: a step already registered gets the metrics it lacks (equal values are fine;
    another value for a metric it has is reported, naming both), files already uploaded are
    accepted as they are, and a step deleted since (by a person or retention) stays deleted.
    """
    if base_model is not None and not create:
        raise click.UsageError("--base-model goes with --create (an existing model keeps its own).")
    found = read_trainer_checkpoints(output_dir)
    if not found:
        raise click.ClickException(f"No checkpoint-N folders in {output_dir}")
    model_id = _model_id(client, model_ref, create, base_model, found)
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

        def on_folder(checkpoint: TrainerCheckpoint, reason: str | None) -> None:
            if reason is not None:
                err.print(f"Skipped {checkpoint.folder.name}: {reason}")
            progress.advance(task)

        report = import_trainer_output(
            client,
            model_id,
            output_dir,
            with_files=with_files,
            include_timing=include_timing,
            include_deleted=include_deleted,
            on_folder=on_folder,
        )
    if fmt != "table":
        echo_json(report)
    else:
        _print_report(report, len(found), with_files)
    if report.skipped:
        click.get_current_context().exit(1)


def _model_id(
    client: Client,
    ref: str,
    create: bool,
    base_model: str | None,
    found: list[TrainerCheckpoint],
) -> str:
    if "/" not in ref:
        if create:
            raise click.UsageError("--create needs the model as PROJECT/NAME.")
        return ref
    model = find_model(client, ref)
    if model is not None:
        return model.id
    if not create:
        raise click.ClickException(
            f"No model {ref} (PROJECT/NAME) for this key: add --create to make it, "
            "or see `ckpt models list`"
        )
    base_model = base_model or base_model_from_config(found)
    if base_model is None:
        raise click.UsageError(
            "--create needs --base-model: no checkpoint's config.json names the model it was "
            "trained from (_name_or_path)."
        )
    project, name = ref.split("/", 1)
    model = client.models.create(
        project=project, name=name, base_model=base_model, return_existing=True
    )
    console(stderr=True).print(f"Created model {ref} ({model.id}) from {base_model}.")
    return model.id


def _print_report(report: ImportReport, folders: int, with_files: bool) -> None:
    line = (
        f"{len(report.registered)} registered, {len(report.already_present)} already "
        f"present, {len(report.merged)} merged, {len(report.skipped)} skipped"
    )
    if report.deleted:
        line += f", {len(report.deleted)} left deleted"
    line += f" ({folders} checkpoint folders)."
    if with_files:
        line += f" {sum(report.uploaded.values())} files uploaded."
    console().print(line)
    err = console(stderr=True)
    if report.deleted:
        err.print(
            f"Left deleted (by a person or retention): steps {_steps(report.deleted)}; "
            "--include-deleted registers them again."
        )
    if report.not_on_disk:
        err.print(
            f"Registered but not in this folder (removed by save_total_limit?): steps "
            f"{_steps(report.not_on_disk)}."
        )
    if report.without_files:
        err.print(f"Registered without files: steps {_steps(report.without_files)}.")


def _steps(steps: list[int], shown: int = 20) -> str:
    # A long-running model can have thousands: a line, not a screenful (--json has them all).
    listed = ", ".join(map(str, steps[:shown]))
    return listed if len(steps) <= shown else f"{listed}, ... ({len(steps)} in all)"
