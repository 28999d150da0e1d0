"""The storage interface: records it returns and the Protocol every database backend implements.

Ids are canonical lowercase UUID strings; callers pass ids exactly as the API received them and the
backend treats anything that is not a canonical UUID as unknown. Timestamps are aware UTC datetimes.
Metrics travel as the JSON text the registry stored (`metrics_json`), so the hot path never decodes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson

Order = Literal["asc", "desc"]
Mode = Literal["max", "min"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    entity: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    read_only: bool = False  # lists, reads and downloads; every write is 403


@dataclass(frozen=True, slots=True)
class Caller:
    """What a live key may do: act for `entity`, and only read when `read_only`."""

    entity: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    entity: str
    project: str
    name: str
    base_model: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ModelPage:
    data: list[Model]
    has_more: bool


# One item of a checkpoint page, `(id, step, metrics_json)`: only what the list endpoint returns.
# A plain tuple, exactly as the database driver yields it: a page makes 21 per request, and wrapping
# each in a named tuple or dataclass cost more than encoding the whole page.
CheckpointRow = tuple[str, int, str]


@dataclass(frozen=True, slots=True)
class CheckpointPage:
    data: list[CheckpointRow]
    has_more: bool


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: str
    step: int
    metrics_json: str
    created_at: datetime
    updated_at: datetime
    files: int = 0  # how many files it holds
    size_bytes: int = 0  # their sizes added up


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str
    sha256: str  # lowercase hex
    size_bytes: int


@dataclass(frozen=True, slots=True)
class FilePage:
    data: list[FileRecord]
    has_more: bool


@dataclass(frozen=True, slots=True)
class Usage:
    entity: str
    checkpoints: int
    files: int
    logical_bytes: int  # every live file's size
    stored_bytes: int  # each distinct content once


@dataclass(frozen=True, slots=True)
class UploadSession:
    """A resumable upload in progress; its staged bytes are the blob store's, under the same id."""

    id: str
    entity: str
    model_id: str
    checkpoint_id: str
    path: str


@dataclass(frozen=True, slots=True)
class BestRule:
    metric: str
    mode: Mode
    k: int


@dataclass(frozen=True, slots=True)
class RetentionResult:
    kept_steps: list[int]
    deleted_steps: list[int]
    # The entity's stored bytes this frees: contents of the deleted checkpoints' files that no
    # surviving file of the entity holds (a dry run: would free). Never about other entities' files.
    freed_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """What a model holds now: its live checkpoints and their files."""

    checkpoints: int
    latest_step: int | None  # None without checkpoints
    last_update: datetime | None  # the latest registration or metrics merge of a live checkpoint
    files: int
    logical_bytes: int  # every live file's size
    stored_bytes: int  # each distinct content once


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """A metric's `(step, value)` points in step order, downsampled to a budget (rules.py)."""

    count: int  # checkpoints in the step range that have the metric
    points: list[tuple[int, float]]


@dataclass(frozen=True, slots=True)
class MetricNamePage:
    """Names of metrics some live checkpoint of a model has, in byte order (UTF-8)."""

    data: list[str]
    has_more: bool


@dataclass(frozen=True, slots=True)
class DeletedStep:
    """A step with no live checkpoint that had one: ``deleted_at`` is its last deletion."""

    step: int
    deleted_at: datetime


@dataclass(frozen=True, slots=True)
class DeletedStepPage:
    data: list[DeletedStep]
    has_more: bool


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted_count: int
    not_found_steps: list[int]


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(value: str) -> str | None:
    """`value` if it is a UUID in canonical lowercase form (as `str(uuid.UUID(...))` writes it)."""
    return value if _CANONICAL_UUID.fullmatch(value) else None


def encode_metrics(metrics: dict[str, float]) -> str:
    """The JSON text stored for a checkpoint's metrics, byte-identical on every backend."""
    return orjson.dumps(metrics).decode()


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A connection pool at one moment: connections lent out, and units of work waiting for one."""

    in_use: int
    waiting: int


class Storage(Protocol):
    """What the server, the CLI and the benchmarks need from a database.

    Every model-scoped method takes the caller's `entity` and raises `ModelNotFound` when the model is
    unknown, deleted or another entity's, so no caller can learn that another entity's model exists.
    """

    async def open(self) -> None:
        """Connect (the pool, the SQLite connection). Called once before any other method."""

    async def close(self) -> None: ...

    def pool_usage(self) -> PoolUsage | None:
        """The connection pool's state for the metrics; None without a pool (SQLite)."""

    async def check(self) -> None:
        """Raise `DatabaseUnavailable` with a reason when the database does not answer, or when
        writes are failing (a full disk, a lock held elsewhere) and a probe write still fails."""

    # Keys -------------------------------------------------------------------------------------

    async def create_key(
        self, entity: str, name: str, key_hash: str, *, read_only: bool = False
    ) -> ApiKey: ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke the key (idempotent); `KeyNotFound` when there is no such key."""

    async def count_keys(self) -> int: ...

    async def caller_for_key(self, key_hash: str) -> Caller | None:
        """The entity and scope of the live key with that sha256 hex hash, or None (unknown or
        revoked)."""

    # Models -----------------------------------------------------------------------------------

    async def create_model(
        self,
        entity: str,
        project: str,
        name: str,
        base_model: str,
        *,
        return_existing: bool,
    ) -> tuple[Model, bool]:
        """The new model and True; or the live model of that name and False when `return_existing`.

        Raises `ModelNameTaken` when the name is live and `return_existing` is false.
        """

    async def get_model(self, entity: str, model_id: str) -> Model: ...

    async def get_model_by_name(self, entity: str, project: str, name: str) -> Model:
        """The entity's live model of that project and name; `ModelNotFound` otherwise."""
        ...

    async def list_models(
        self, entity: str, *, project: str | None, after: str | None, limit: int, order: Order
    ) -> ModelPage:
        """Keyset page by (created_at, id); `InvalidCursor` when `after` is no model of the entity."""

    async def model_summary(self, entity: str, model_id: str) -> ModelSummary:
        """Counts and sizes of the model's live checkpoints and files (reads every checkpoint row of
        the model: ~30 ms at 100,000)."""

    async def delete_model(self, entity: str, model_id: str) -> int:
        """Delete the model and its checkpoints; the number of live checkpoints deleted.

        The model is gone for every request at once; its rows may go in several transactions, and
        a delete cut short (a killed process) is finished by `purge_deleted_models`.
        """

    async def purge_deleted_models(self) -> int:
        """Remove the rows every deleted model still has; the number of models finished."""

    # Checkpoints ------------------------------------------------------------------------------

    async def list_checkpoints(
        self, entity: str, model_id: str, *, after: str | None, limit: int, order: Order
    ) -> CheckpointPage:
        """Keyset page by (step, id) strictly after the cursor in the requested order.

        `after` may name a live checkpoint or a tombstone of this model; anything else raises
        `InvalidCursor` (`CursorExpired` when the tombstone was purged).
        """

    async def register_checkpoint(
        self, entity: str, model_id: str, step: int, metrics: dict[str, float]
    ) -> tuple[Checkpoint, bool]:
        """The new checkpoint and True, or the existing one and False when its metrics are equal.

        Raises `StepConflict` when the step is live with different metrics.
        """

    async def get_checkpoint(
        self, entity: str, model_id: str, checkpoint_id: str
    ) -> Checkpoint: ...

    async def get_checkpoint_at_step(self, entity: str, model_id: str, step: int) -> Checkpoint:
        """The live checkpoint at `step`; CheckpointNotFound when there is none."""
        ...

    async def update_metrics(
        self, entity: str, model_id: str, checkpoint_id: str, metrics: dict[str, float]
    ) -> Checkpoint:
        """Merge `metrics` into the checkpoint's (new names added, existing ones overwritten)."""

    async def delete_checkpoints(
        self, entity: str, model_id: str, steps: list[int]
    ) -> DeleteResult:
        """Delete the live checkpoints at `steps`, leaving tombstones; unknown steps are reported."""

    async def list_deleted_steps(
        self, entity: str, model_id: str, *, after_step: int | None, limit: int
    ) -> DeletedStepPage:
        """The model's deleted steps (a tombstone, no live checkpoint) above `after_step`, by step:
        what an import must not bring back. Tombstones are purged after a while (`ckpt db gc`)."""

    async def best_checkpoint(
        self, entity: str, model_id: str, metric: str, mode: Mode
    ) -> Checkpoint:
        """Best by one metric (ties: later step), from an index; `MetricNotFound` when none has it."""

    async def apply_retention(
        self,
        entity: str,
        model_id: str,
        *,
        keep_latest: int,
        keep_best: BestRule | None,
        dry_run: bool,
    ) -> RetentionResult:
        """Delete every checkpoint neither among the latest `keep_latest` nor the best `keep_best.k`.

        The latest checkpoint is always kept. Checkpoints registered while this runs are kept, and
        the result names exactly the steps this call deleted. A dry run changes and locks nothing.
        """

    async def metric_series(
        self,
        entity: str,
        model_id: str,
        metric: str,
        *,
        points: int,
        step_min: int,
        step_max: int,
    ) -> MetricSeries:
        """The metric's values at steps `step_min..step_max`, at most `points` of them, kept by
        `rules.downsample_series`; an empty series when no checkpoint in the range has it."""

    async def list_metric_names(
        self, entity: str, model_id: str, *, after: str | None, limit: int
    ) -> MetricNamePage:
        """The names of the metrics the model's live checkpoints have, each once, in byte order,
        strictly after the name `after`: read from the primary key of the metric rows one name at
        a time, never from every row (a model of 100,000 checkpoints answers in under a ms)."""

    async def purge_tombstones(self, older_than: datetime) -> int:
        """Remove tombstones deleted before `older_than`; remember their ids as expired cursors."""

    # Files --------------------------------------------------------------------------------------

    async def require_checkpoint(self, entity: str, model_id: str, checkpoint_id: str) -> None:
        """`ModelNotFound` / `CheckpointNotFound` unless the checkpoint is live (before an upload)."""

    async def touch_blob(self, sha256: str, size_bytes: int) -> None:
        """Mark the content as about to be referenced, just before its blob becomes visible: the
        collector leaves a blob touched within its grace period alone."""

    async def attach_file(
        self,
        entity: str,
        model_id: str,
        checkpoint_id: str,
        path: str,
        sha256: str,
        size_bytes: int,
    ) -> tuple[FileRecord, bool]:
        """Give the checkpoint a file: the new record and True, or the existing one and False when the
        path holds the same content; `FileConflict` when it holds other content."""

    async def get_file(
        self, entity: str, model_id: str, checkpoint_id: str, path: str
    ) -> FileRecord: ...

    async def list_files(
        self, entity: str, model_id: str, checkpoint_id: str, *, after: str | None, limit: int
    ) -> FilePage:
        """The checkpoint's files by path in byte order, strictly after the path `after`."""

    async def delete_file(self, entity: str, model_id: str, checkpoint_id: str, path: str) -> None:
        """`FileNotFound` when the checkpoint has no file at `path`."""

    async def held_contents(self, entity: str, sha256s: list[str]) -> dict[str, int]:
        """Of `sha256s`, the contents some live file of the entity holds, with their sizes. Scoped
        to the entity: no answer says anything about another entity's files."""

    async def usage(self, entity: str) -> Usage: ...

    async def collect_blobs(
        self, older_than: datetime, remove: Callable[[str], Coroutine[Any, Any, None]]
    ) -> tuple[int, int]:
        """Remove blobs no file references and untouched since `older_than`: `remove(sha256)`
        deletes the object while its row is held, so no upload can start referencing it meanwhile.
        The number of blobs and bytes removed."""

    async def create_upload(
        self, entity: str, model_id: str, checkpoint_id: str, path: str, upload_id: str
    ) -> UploadSession:
        """Remember an upload in progress under `upload_id` (a canonical UUID), for the entity."""

    async def get_upload(self, entity: str, upload_id: str) -> UploadSession:
        """`UploadNotFound` for an unknown, finished or another entity's upload."""

    async def end_upload(self, upload_id: str) -> None:
        """Forget an upload (finished or cancelled); idempotent."""

    async def expire_uploads(self, older_than: datetime) -> list[str]:
        """Forget uploads started before `older_than`; their ids (the caller drops staged bytes)."""
