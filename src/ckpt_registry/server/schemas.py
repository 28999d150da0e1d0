"""Request and response schemas: requests are validated here; responses document the API.

Responses are written as pre-encoded JSON (see `responses.py`) rather than validated through these
models: validating our own output cost more than the database query on the list endpoint.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StrictInt, StringConstraints

from ..contract import (
    MAX_BASE_MODEL_LENGTH,
    MAX_DELETE_STEPS,
    MAX_METRICS,
    MAX_NAME_LENGTH,
    MAX_STEP,
)

Step = Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]


def _storable(text: str) -> str:
    # JSON allows "\u0000" and lone surrogates ("\ud800"); neither can be stored as text by every
    # database (PostgreSQL refuses NUL, UTF-8 has no surrogates), so they are refused here, up front.
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


Storable = AfterValidator(_storable)
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH), Storable]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH), Storable]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("metric values must be finite numbers")
    return value


# Strict: JSON numbers only (no booleans, no numeric strings); ints become floats, so 1 == 1.0.
MetricValue = Annotated[float, Field(strict=True, allow_inf_nan=False), AfterValidator(_finite)]
Metrics = Annotated[dict[MetricName, MetricValue], Field(max_length=MAX_METRICS)]

T = TypeVar("T")


class PaginatedResponse(BaseModel, Generic[T]):
    object: str = Field(default="list", description="Object type identifier")
    data: list[T] = Field(description="Array of items")
    first_id: str = Field(default="", description="ID of the first item in the current page")
    last_id: str = Field(default="", description="ID of the last item in the current page")
    has_more: bool = Field(description="Whether there are more items available")


class CheckpointResponse(BaseModel):
    """Schema for Checkpoint response."""

    id: uuid.UUID
    step: int
    metrics: dict[str, float]


class CheckpointDetail(CheckpointResponse):
    """A checkpoint with its timestamps (ISO 8601, UTC) and its files (count, total size)."""

    created_at: str
    updated_at: str
    files: int
    size_bytes: int


class FileResponse(BaseModel):
    """A file of a checkpoint; `sha256` is lowercase hex and also its ETag."""

    path: str
    size_bytes: int
    sha256: str


class FileList(BaseModel):
    object: str = Field(default="list", description="Object type identifier")
    data: list[FileResponse]
    has_more: bool


class UsageResponse(BaseModel):
    """What the key's entity holds: `logical_bytes` counts every live file, `stored_bytes` each
    distinct content once."""

    entity: str
    checkpoints: int
    files: int
    logical_bytes: int
    stored_bytes: int


class KeyResponse(BaseModel):
    """The key a request presented: the entity it acts for, and whether it may only read."""

    entity: str
    read_only: bool


class ModelCreate(BaseModel):
    entity: Name | None = None
    project: Name
    name: Name
    base_model: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_BASE_MODEL_LENGTH), Storable
    ]
    return_existing: StrictBool = False


class ModelResponse(BaseModel):
    id: uuid.UUID
    entity: str
    project: str
    name: str
    base_model: str
    run_id: str | None = None


class DeleteModelResponse(BaseModel):
    model_id: uuid.UUID
    deleted_checkpoints: int
    deleted_run: bool


class CheckpointCreate(BaseModel):
    step: Step
    metrics: Metrics = Field(default_factory=dict)


class MetricsUpdate(BaseModel):
    metrics: Metrics


class DeleteCheckpointsRequest(BaseModel):
    steps: Annotated[list[Step], Field(max_length=MAX_DELETE_STEPS)]


class DeleteCheckpointsResponse(BaseModel):
    deleted_count: int
    not_found_steps: list[int]


class KeepBest(BaseModel):
    metric: MetricName
    mode: Literal["max", "min"] = "max"
    k: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]


class RetentionRequest(BaseModel):
    keep_latest: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]
    keep_best: KeepBest | None = None
    dry_run: StrictBool = False


class RetentionResponse(BaseModel):
    dry_run: bool
    kept_steps: list[int]
    deleted_steps: list[int]
    freed_bytes: int = Field(
        description="The entity's stored bytes this frees (a dry run: would free): contents of the "
        "deleted checkpoints' files that no surviving file of the entity holds"
    )


class DeletedStep(BaseModel):
    step: int
    deleted_at: str = Field(description="When the step's checkpoint was last deleted (UTC)")


class DeletedStepList(BaseModel):
    """A page of deleted steps by step; the next page is `after_step` = the last step here."""

    object: Literal["list"] = "list"
    data: list[DeletedStep]
    has_more: bool


class ModelSummaryResponse(BaseModel):
    object: Literal["model.summary"] = "model.summary"
    model_id: uuid.UUID
    checkpoints: int = Field(description="Live checkpoints")
    latest_step: int | None = Field(description="The highest live step; null without checkpoints")
    last_update: str | None = Field(
        description="When a live checkpoint was last registered or had metrics merged"
    )
    files: int = Field(description="Files of the live checkpoints")
    logical_bytes: int = Field(description="Their sizes added up")
    stored_bytes: int = Field(description="Each distinct content once")


class MetricSeriesResponse(BaseModel):
    object: Literal["series"] = "series"
    metric: str
    count: int = Field(description="Checkpoints in the step range that have the metric")
    downsampled: bool = Field(description="Whether points were left out (count > len(steps))")
    steps: list[int] = Field(description="Steps, ascending")
    values: list[float] = Field(description="The metric's value at each of `steps`")


class MetricNameList(BaseModel):
    """A page of a model's metric names in byte order; the next page is `after` = the last name."""

    object: Literal["list"] = "list"
    data: list[str] = Field(description="Names some live checkpoint of the model has, each once")
    has_more: bool


class Health(BaseModel):
    pass


class SystemCheck(BaseModel):
    status: Literal["ok", "error"]
    checks: dict[str, str]


class ErrorDetail(BaseModel):
    detail: str


# What every model-scoped operation may answer besides its success and the refusals every route of
# its kind gets (401, 403, 413, ...: `refusals.py`, added to /openapi.json by `openapi.py`).
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorDetail,
        "description": "The model (or checkpoint, file, upload) is unknown",
    },
}
