"""What a Hugging Face Trainer writes, read without importing transformers; "register or merge",
the one way the Trainer callback and ``ckpt import hf-trainer`` send a step's metrics; and the
import of a whole output directory (:func:`import_trainer_output`), which the CLI only renders.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..client import Client, ConflictError, FileConflictError, UnprocessableEntityError
from ..client.transfers import merge_plan
from ..client.types import CheckpointDetail

__all__ = [
    "CorruptCheckpoint",
    "ImportReport",
    "MergeResult",
    "MetricConflict",
    "TrainerCheckpoint",
    "base_model_from_config",
    "import_trainer_output",
    "is_timing_metric",
    "metrics_at_step",
    "metrics_from_history",
    "read_trainer_checkpoints",
    "register_or_merge",
    "training_metrics",
]

CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")

# How long something took and how fast it went: they differ on every run of the same training,
# so keeping them would make a deterministic re-run (or a re-import) conflict with itself.
_TIMING = re.compile(r".*(_runtime|_per_second)")


class CorruptCheckpoint(Exception):
    """A checkpoint folder whose trainer_state.json cannot be read as the Trainer writes it."""


class MetricConflict(Exception):
    """The step is registered with another value for a metric."""

    def __init__(self, step: int, name: str, registered: float, new: float) -> None:
        super().__init__(
            f"step {step} is registered with {name}={registered!r}, not {new!r}",
        )
        self.step = step
        self.name = name
        self.registered = registered
        self.new = new


@dataclass(frozen=True, slots=True)
class TrainerCheckpoint:
    step: int
    folder: Path


@dataclass(frozen=True, slots=True)
class MergeResult:
    """``outcome``: ``registered`` (new step), ``present`` (already there with these metrics,
    maybe more) or ``merged`` (metrics it lacked were added)."""

    checkpoint: CheckpointDetail
    outcome: Literal["registered", "present", "merged"]


def is_timing_metric(name: str) -> bool:
    """``train_runtime``, ``eval_samples_per_second``, ``eval_steps_per_second``..."""
    return _TIMING.fullmatch(name) is not None


def training_metrics(logs: Mapping[str, Any], *, include_timing: bool = False) -> dict[str, float]:
    """The finite numbers of one Trainer log entry, without ``step`` (and without timing
    metrics unless ``include_timing``)."""
    metrics: dict[str, float] = {}
    for name, value in logs.items():
        if name == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not include_timing and is_timing_metric(name):
            continue
        if math.isfinite(value):
            metrics[name] = float(value)
    return metrics


def metrics_from_history(
    history: Iterable[Mapping[str, Any]], step: int, *, include_timing: bool = False
) -> dict[str, float]:
    """Every ``log_history`` entry for ``step`` merged (training and evaluation logs are
    separate entries), as :func:`training_metrics` keeps them."""
    metrics: dict[str, float] = {}
    for entry in history:
        if isinstance(entry, Mapping) and entry.get("step") == step:
            metrics.update(training_metrics(entry, include_timing=include_timing))
    return metrics


def read_trainer_checkpoints(output_dir: Path) -> list[TrainerCheckpoint]:
    """The ``checkpoint-N`` folders of a Trainer output directory, by step."""
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append(TrainerCheckpoint(int(match.group(1)), path))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def metrics_at_step(folder: Path, step: int, *, include_timing: bool = False) -> dict[str, float]:
    """The metrics the Trainer logged at ``step``, from ``folder/trainer_state.json``."""
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
    return metrics_from_history(history, step, include_timing=include_timing)


def register_or_merge(
    client: Client, model_id: str, step: int, metrics: Mapping[str, float]
) -> MergeResult:
    """Register ``step`` with ``metrics``; when it is already registered, add the metrics it
    lacks. Equal values are fine; another value for a metric it has raises
    :class:`MetricConflict` (naming the metric and both values) and changes nothing."""
    try:
        registered = client.checkpoints.register(model_id, step=step, metrics=metrics)
    except ConflictError:
        existing = client.checkpoints.at_step(model_id, step)
    else:
        return MergeResult(registered, "registered" if registered.created else "present")
    # The rule is the SDK's (`client.checkpoints.save` merges the same way); this is its sync form.
    conflict, missing = merge_plan(existing.metrics, metrics)
    if conflict is not None:
        raise MetricConflict(step, *conflict)
    if not missing:
        return MergeResult(existing, "present")
    return MergeResult(client.checkpoints.update_metrics(model_id, existing.id, missing), "merged")


def base_model_from_config(checkpoints: Iterable[TrainerCheckpoint]) -> str | None:
    """What the model was trained from, as the Trainer saved it: ``_name_or_path`` in a
    checkpoint's ``config.json`` (the latest that has one), or None. A model built from a config
    alone has none (``""``): no name is made up for it."""
    for checkpoint in sorted(checkpoints, key=lambda c: c.step, reverse=True):
        try:
            config = json.loads((checkpoint.folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        name = config.get("_name_or_path") if isinstance(config, dict) else None
        if isinstance(name, str) and name.strip():
            return name
    return None


@dataclass
class ImportReport:
    """What :func:`import_trainer_output` did, by step."""

    registered: list[int] = field(default_factory=list)
    already_present: list[int] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)  # registered before; metrics it lacked added
    #: ``{"step", "folder", "reason"}`` of each folder not imported because of a problem.
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: Folders of steps deleted on the server (by a person or retention), left deleted.
    deleted: list[int] = field(default_factory=list)
    #: With files: step -> files its checkpoint holds from the folder, and of those the ones
    #: that sent no byte (the checkpoint had them, or the entity held the same content).
    uploaded: dict[int, int] = field(default_factory=dict)
    already_uploaded: dict[int, int] = field(default_factory=dict)
    #: Registered steps with no checkpoint folder here (``save_total_limit`` removed it, say).
    not_on_disk: list[int] = field(default_factory=list)
    #: With files: registered steps that have no files on the server.
    without_files: list[int] = field(default_factory=list)


def import_trainer_output(
    client: Client,
    model_id: str,
    output_dir: Path,
    *,
    with_files: bool = False,
    include_timing: bool = False,
    include_deleted: bool = False,
    on_folder: Callable[[TrainerCheckpoint, str | None], None] | None = None,
) -> ImportReport:
    """Register every ``checkpoint-N`` folder of a Trainer ``output_dir`` as step N with the
    metrics logged at N (register or merge: safe to re-run), and with ``with_files`` upload its
    files. A step deleted on the server is left deleted unless ``include_deleted``.

    A folder with a problem of its own (unreadable state, a metric conflict, refused metrics or
    files) is skipped and reported; any other error (unknown model, bad key, server down) is
    raised, since every other folder would fail the same way. ``on_folder(checkpoint, reason)``
    is called after each folder (``reason`` None unless it was skipped)."""
    found = read_trainer_checkpoints(output_dir)
    report = ImportReport()
    deleted = set() if include_deleted or not found else _deleted_steps(client, model_id, found)
    for checkpoint in found:
        reason = None
        if checkpoint.step in deleted:
            report.deleted.append(checkpoint.step)
        else:
            reason = _import_one(client, model_id, checkpoint, report, with_files, include_timing)
            if reason is not None:
                report.skipped.append(
                    {"step": checkpoint.step, "folder": checkpoint.folder.name, "reason": reason}
                )
        if on_folder is not None:
            on_folder(checkpoint, reason)
    on_disk = {checkpoint.step for checkpoint in found}
    report.not_on_disk = [
        c.step for c in client.checkpoints.list(model_id, limit=100) if c.step not in on_disk
    ]
    if with_files:
        # Only the steps without a folder can lack files: the others were just uploaded.
        report.without_files = [
            step
            for step in report.not_on_disk
            if client.checkpoints.at_step(model_id, step).files == 0
        ]
    return report


def _deleted_steps(client: Client, model_id: str, found: list[TrainerCheckpoint]) -> set[int]:
    """The steps among ``found``'s range that were deleted on the server."""
    low, high = found[0].step, found[-1].step
    steps = set()
    for deleted in client.checkpoints.deleted_steps(
        model_id, after_step=low - 1 if low > 0 else None
    ):
        if deleted.step > high:
            break
        steps.add(deleted.step)
    return steps


def _import_one(
    client: Client,
    model_id: str,
    checkpoint: TrainerCheckpoint,
    report: ImportReport,
    with_files: bool,
    include_timing: bool,
) -> str | None:
    """Import one folder; the reason it was skipped, or None. Metrics are read completely before
    anything is sent, so a bad folder is never half-imported."""
    try:
        metrics = metrics_at_step(checkpoint.folder, checkpoint.step, include_timing=include_timing)
        result = register_or_merge(client, model_id, checkpoint.step, metrics)
    except (CorruptCheckpoint, MetricConflict) as exc:
        return str(exc)
    except UnprocessableEntityError as exc:
        return exc.message
    {
        "registered": report.registered,
        "present": report.already_present,
        "merged": report.merged,
    }[result.outcome].append(checkpoint.step)
    if not with_files:
        return None
    try:
        sent = client.checkpoints.upload(
            model_id, checkpoint.folder, checkpoint_id=result.checkpoint.id
        )
    except (ConflictError, FileConflictError, UnprocessableEntityError) as exc:
        return f"files: {exc.message}"
    report.uploaded[checkpoint.step] = sent.files_sent + sent.files_skipped
    report.already_uploaded[checkpoint.step] = sent.files_skipped
    return None
