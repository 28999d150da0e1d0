"""The typed results the SDK returns, each parsed from the server's JSON by ``from_json``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "Checkpoint",
    "CheckpointDetail",
    "CheckpointsDeleted",
    "DeletedStep",
    "Model",
    "ModelDeleted",
    "Order",
    "RegisteredCheckpoint",
    "RetentionResult",
    "SortMode",
]

Order = Literal["asc", "desc"]
SortMode = Literal["max", "min"]


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    entity: str
    project: str
    name: str
    base_model: str
    run_id: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Model:
        return cls(
            id=body["id"],
            entity=body["entity"],
            project=body["project"],
            name=body["name"],
            base_model=body["base_model"],
            run_id=body.get("run_id"),
        )


@dataclass(frozen=True, slots=True)
class ModelDeleted:
    model_id: str
    deleted_checkpoints: int
    deleted_run: bool

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelDeleted:
        return cls(
            model_id=body["model_id"],
            deleted_checkpoints=body["deleted_checkpoints"],
            deleted_run=body["deleted_run"],
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint as lists return it."""

    id: str
    step: int
    metrics: dict[str, float]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Checkpoint:
        return cls(id=body["id"], step=body["step"], metrics=_metrics(body["metrics"]))


@dataclass(frozen=True, slots=True)
class CheckpointDetail:
    """A checkpoint with its timestamps and files (count, total size), as the single-checkpoint
    endpoints return it."""

    id: str
    step: int
    metrics: dict[str, float]
    created_at: datetime
    updated_at: datetime
    files: int = 0
    size_bytes: int = 0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CheckpointDetail:
        return cls(
            id=body["id"],
            step=body["step"],
            metrics=_metrics(body["metrics"]),
            created_at=_timestamp(body["created_at"]),
            updated_at=_timestamp(body["updated_at"]),
            files=body.get("files", 0),
            size_bytes=body.get("size_bytes", 0),
        )


@dataclass(frozen=True, slots=True)
class RegisteredCheckpoint(CheckpointDetail):
    """The result of a registration: ``created`` is false when the step was already registered
    with the same metrics (an idempotent retry; the server answered 200 instead of 201)."""

    created: bool = True


@dataclass(frozen=True, slots=True)
class CheckpointsDeleted:
    deleted_count: int
    not_found_steps: list[int]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CheckpointsDeleted:
        return cls(
            deleted_count=body["deleted_count"], not_found_steps=list(body["not_found_steps"])
        )


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What a retention run kept and deleted (or would, with ``dry_run``), steps ascending."""

    dry_run: bool
    kept_steps: list[int]
    deleted_steps: list[int]
    freed_bytes: int = 0  # stored bytes no file references any more

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RetentionResult:
        return cls(
            dry_run=body["dry_run"],
            kept_steps=list(body["kept_steps"]),
            deleted_steps=list(body["deleted_steps"]),
            freed_bytes=body.get("freed_bytes", 0),
        )


def _metrics(raw: dict[str, Any]) -> dict[str, float]:
    # The server stores floats but JSON may carry `1` for `1.0`; give callers one type.
    return {name: float(value) for name, value in raw.items()}


@dataclass(frozen=True, slots=True)
class DeletedStep:
    """A step whose checkpoint was deleted and that has no live checkpoint now."""

    step: int
    deleted_at: datetime

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DeletedStep:
        return cls(step=body["step"], deleted_at=_timestamp(body["deleted_at"]))


def _timestamp(raw: str) -> datetime:
    # fromisoformat accepts the `Z` suffix since Python 3.11; naive stamps are taken as UTC.
    parsed = datetime.fromisoformat(raw)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
