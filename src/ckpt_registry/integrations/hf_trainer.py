"""What a Hugging Face Trainer writes, read without importing transformers, and "register or
merge", the one way the Trainer callback and ``ckpt import hf-trainer`` send a step's metrics.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..client import Client, ConflictError
from ..client.types import CheckpointDetail

__all__ = [
    "CorruptCheckpoint",
    "MergeResult",
    "MetricConflict",
    "TrainerCheckpoint",
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
    for name, value in metrics.items():
        if name in existing.metrics and existing.metrics[name] != value:
            raise MetricConflict(step, name, existing.metrics[name], value)
    missing = {name: value for name, value in metrics.items() if name not in existing.metrics}
    if not missing:
        return MergeResult(existing, "present")
    return MergeResult(client.checkpoints.update_metrics(model_id, existing.id, missing), "merged")
