"""Checkpoints of a model: list (the W&B-compatible hot path), register, read, merge metrics, delete,
best by metric and retention."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query
from starlette.responses import Response

from ...contract import (
    CHECKPOINTS_PATH,
    DELETED_STEPS_LIMIT_DEFAULT,
    DELETED_STEPS_LIMIT_MAX,
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    LIST_LIMIT_MIN,
    LIST_ORDER_DEFAULT,
    MAX_STEP,
    METRIC_NAMES_LIMIT_DEFAULT,
    METRIC_NAMES_LIMIT_MAX,
    METRIC_NAMES_PATH,
    SERIES_PATH,
    SERIES_POINTS_DEFAULT,
    SERIES_POINTS_MAX,
    SERIES_POINTS_MIN,
    Order,
)
from ...storage.base import BestRule
from ..auth import Entity, StorageDep
from ..bodies import JSONBodyRoute
from ..errors import RequestInvalid
from ..responses import JSONBytes, checkpoint_detail, checkpoint_page_body, timestamp
from ..schemas import (
    MODEL_ERRORS,
    CheckpointCreate,
    CheckpointDetail,
    CheckpointResponse,
    DeleteCheckpointsRequest,
    DeleteCheckpointsResponse,
    DeletedStepList,
    ErrorDetail,
    MetricName,
    MetricNameList,
    MetricSeriesResponse,
    MetricsUpdate,
    PaginatedResponse,
    RetentionRequest,
    RetentionResponse,
)

router = APIRouter(prefix=CHECKPOINTS_PATH, tags=["models"], route_class=JSONBodyRoute)

# A step in a URL: 0 or digits without a leading zero, at most 19 of them (MAX_STEP has 19).
STEP_TEXT = r"^(0|[1-9][0-9]{0,18})$"


@router.get(
    "",
    summary="List Model Checkpoints",
    response_model=PaginatedResponse[CheckpointResponse],
    responses=MODEL_ERRORS,
)
async def list_model_checkpoints(
    model_id: str,
    entity: Entity,
    storage: StorageDep,
    after: Annotated[
        str | None,
        Query(description="Cursor for pagination - ID of the last item from previous page"),
    ] = None,
    limit: Annotated[
        int,
        Query(ge=LIST_LIMIT_MIN, le=LIST_LIMIT_MAX, description="Number of items to return"),
    ] = LIST_LIMIT_DEFAULT,
    order: Annotated[Order, Query(description="Sort order")] = LIST_ORDER_DEFAULT,
) -> Response:
    # The same operation is served by `fastpath.py` for well-formed requests; this route answers the
    # rest (every error) and defines the operation's OpenAPI description.
    page = await storage.list_checkpoints(entity, model_id, after=after, limit=limit, order=order)
    return Response(checkpoint_page_body(page), media_type="application/json")


@router.delete(
    "",
    summary="Delete Model Checkpoints",
    response_model=DeleteCheckpointsResponse,
    responses=MODEL_ERRORS,
)
async def delete_model_checkpoints(
    model_id: str, body: DeleteCheckpointsRequest, entity: Entity, storage: StorageDep
) -> Response:
    result = await storage.delete_checkpoints(entity, model_id, body.steps)
    return JSONBytes(
        {"deleted_count": result.deleted_count, "not_found_steps": result.not_found_steps}
    )


@router.post(
    "",
    summary="Register Checkpoint",
    status_code=201,
    response_model=CheckpointDetail,
    responses={
        **MODEL_ERRORS,
        200: {
            "model": CheckpointDetail,
            "description": "The step was already registered with equal metrics",
        },
        409: {"model": ErrorDetail},
    },
)
async def register_checkpoint(
    model_id: str, body: CheckpointCreate, entity: Entity, storage: StorageDep
) -> Response:
    checkpoint, created = await storage.register_checkpoint(
        entity, model_id, body.step, body.metrics
    )
    return JSONBytes(checkpoint_detail(checkpoint), 201 if created else 200)


@router.get(
    "/best",
    summary="Best Checkpoint By Metric",
    response_model=CheckpointDetail,
    responses=MODEL_ERRORS,
)
async def best_checkpoint(
    model_id: str,
    entity: Entity,
    storage: StorageDep,
    metric: Annotated[MetricName, Query(description="The metric to rank by")],
    mode: Annotated[Literal["max", "min"], Query(description="Higher or lower is better")] = "max",
) -> Response:
    return JSONBytes(
        checkpoint_detail(await storage.best_checkpoint(entity, model_id, metric, mode))
    )


@router.get(
    "/deleted-steps",
    summary="List Deleted Steps",
    response_model=DeletedStepList,
    responses=MODEL_ERRORS,
)
async def list_deleted_steps(
    model_id: str,
    entity: Entity,
    storage: StorageDep,
    after_step: Annotated[
        int | None,
        Query(ge=0, le=MAX_STEP, description="Only steps above this one (the last of a page)"),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=DELETED_STEPS_LIMIT_MAX, description="Steps per page")
    ] = DELETED_STEPS_LIMIT_DEFAULT,
) -> Response:
    """Steps whose checkpoint was deleted (by a user or retention) and that have no live
    checkpoint now, by step, each with its last deletion time: what an importer must not register
    again unless asked. Known while the tombstones are kept (`ckpt db gc --older-than`, 24 h by
    default)."""
    page = await storage.list_deleted_steps(entity, model_id, after_step=after_step, limit=limit)
    return JSONBytes(
        {
            "object": "list",
            "data": [
                {"step": deleted.step, "deleted_at": timestamp(deleted.deleted_at)}
                for deleted in page.data
            ],
            "has_more": page.has_more,
        }
    )


@router.get(
    SERIES_PATH.removeprefix(CHECKPOINTS_PATH),
    summary="Metric Series",
    response_model=MetricSeriesResponse,
    responses=MODEL_ERRORS,
)
async def metric_series(
    model_id: str,
    entity: Entity,
    storage: StorageDep,
    metric: Annotated[MetricName, Query(description="The metric to read")],
    points: Annotated[
        int,
        Query(
            ge=SERIES_POINTS_MIN,
            le=SERIES_POINTS_MAX,
            description="At most this many points; more are downsampled keeping each run's "
            "lowest and highest value, the first and the last",
        ),
    ] = SERIES_POINTS_DEFAULT,
    step_min: Annotated[
        int, Query(ge=0, le=MAX_STEP, description="The first step of the range (zoom)")
    ] = 0,
    step_max: Annotated[
        int, Query(ge=0, le=MAX_STEP, description="The last step of the range (zoom)")
    ] = MAX_STEP,
) -> Response:
    if step_min > step_max:
        raise RequestInvalid(["query", "step_max"], "step_max must be at least step_min")
    series = await storage.metric_series(
        entity, model_id, metric, points=points, step_min=step_min, step_max=step_max
    )
    return JSONBytes(
        {
            "object": "series",
            "metric": metric,
            "count": series.count,
            "downsampled": series.count > len(series.points),
            "steps": [step for step, _ in series.points],
            "values": [value for _, value in series.points],
        }
    )


@router.get(
    METRIC_NAMES_PATH.removeprefix(CHECKPOINTS_PATH),
    summary="List Metric Names",
    response_model=MetricNameList,
    responses=MODEL_ERRORS,
)
async def list_metric_names(
    model_id: str,
    entity: Entity,
    storage: StorageDep,
    after: Annotated[
        MetricName | None,
        Query(description="Only names after this one in byte order (the last of a page)"),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=METRIC_NAMES_LIMIT_MAX, description="Names per page")
    ] = METRIC_NAMES_LIMIT_DEFAULT,
) -> Response:
    """Every metric name the model's live checkpoints have, each once, in byte order (UTF-8): what
    a chart can be drawn of, however old the checkpoints that have it."""
    page = await storage.list_metric_names(entity, model_id, after=after, limit=limit)
    return JSONBytes({"object": "list", "data": page.data, "has_more": page.has_more})


@router.post(
    "/retention",
    summary="Apply Retention",
    response_model=RetentionResponse,
    responses=MODEL_ERRORS,
)
async def apply_retention(
    model_id: str, body: RetentionRequest, entity: Entity, storage: StorageDep
) -> Response:
    keep_best = (
        BestRule(body.keep_best.metric, body.keep_best.mode, body.keep_best.k)
        if body.keep_best is not None
        else None
    )
    result = await storage.apply_retention(
        entity, model_id, keep_latest=body.keep_latest, keep_best=keep_best, dry_run=body.dry_run
    )
    return JSONBytes(
        {
            "dry_run": body.dry_run,
            "kept_steps": result.kept_steps,
            "deleted_steps": result.deleted_steps,
            "freed_bytes": result.freed_bytes,
        }
    )


@router.get(
    "/steps/{step}",
    summary="Get Checkpoint At Step",
    response_model=CheckpointDetail,
    responses=MODEL_ERRORS,
)
async def get_checkpoint_at_step(
    model_id: str,
    step: Annotated[
        str,
        Path(
            pattern=STEP_TEXT,
            description="The checkpoint's step: decimal digits, no sign or leading zero",
        ),
    ],
    entity: Entity,
    storage: StorageDep,
) -> Response:
    # Text, not int: `1.0` or `007` would otherwise be taken for a step as lenient parsing does.
    if int(step) > MAX_STEP:
        raise RequestInvalid(["path", "step"], f"a step is at most {MAX_STEP}")
    return JSONBytes(
        checkpoint_detail(await storage.get_checkpoint_at_step(entity, model_id, int(step)))
    )


@router.get(
    "/{checkpoint_id}",
    summary="Get Checkpoint",
    response_model=CheckpointDetail,
    responses=MODEL_ERRORS,
)
async def get_checkpoint(
    model_id: str, checkpoint_id: str, entity: Entity, storage: StorageDep
) -> Response:
    return JSONBytes(
        checkpoint_detail(await storage.get_checkpoint(entity, model_id, checkpoint_id))
    )


@router.patch(
    "/{checkpoint_id}",
    summary="Update Checkpoint Metrics",
    response_model=CheckpointDetail,
    responses=MODEL_ERRORS,
)
async def update_checkpoint_metrics(
    model_id: str,
    checkpoint_id: str,
    body: Annotated[MetricsUpdate, Body()],
    entity: Entity,
    storage: StorageDep,
) -> Response:
    checkpoint = await storage.update_metrics(entity, model_id, checkpoint_id, body.metrics)
    return JSONBytes(checkpoint_detail(checkpoint))
