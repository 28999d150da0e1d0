"""Models: create, list, read, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from ...contract import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    LIST_LIMIT_MIN,
    LIST_ORDER_DEFAULT,
    MODEL_SUMMARY_PATH,
    MODELS_PATH,
    Order,
)
from ..auth import Entity, StorageDep
from ..bodies import JSONBodyRoute
from ..errors import Forbidden
from ..responses import JSONBytes, model_page, model_response, timestamp
from ..schemas import (
    MODEL_ERRORS,
    DeleteModelResponse,
    ErrorDetail,
    ModelCreate,
    ModelResponse,
    ModelSummaryResponse,
    PaginatedResponse,
)

router = APIRouter(prefix=MODELS_PATH, tags=["models"], route_class=JSONBodyRoute)


@router.post(
    "",
    summary="Create Model",
    response_model=ModelResponse,
    responses={
        403: {"model": ErrorDetail, "description": "`entity` is not the key's entity"},
        409: {"model": ErrorDetail, "description": "A live model has this name"},
    },
)
async def create_model(body: ModelCreate, entity: Entity, storage: StorageDep) -> Response:
    if body.entity is not None and body.entity != entity:
        raise Forbidden(f"This API key cannot create models for entity {body.entity!r}")
    model, _ = await storage.create_model(
        entity, body.project, body.name, body.base_model, return_existing=body.return_existing
    )
    return JSONBytes(model_response(model))


@router.get(
    "",
    summary="List Models",
    response_model=PaginatedResponse[ModelResponse],
)
async def list_models(
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
    project: Annotated[str | None, Query(description="Only models of this project")] = None,
) -> Response:
    page = await storage.list_models(entity, project=project, after=after, limit=limit, order=order)
    return JSONBytes(model_page(page))


@router.get(
    "/{model_id}", summary="Get Model", response_model=ModelResponse, responses=MODEL_ERRORS
)
async def get_model(model_id: str, entity: Entity, storage: StorageDep) -> Response:
    return JSONBytes(model_response(await storage.get_model(entity, model_id)))


@router.delete(
    "/{model_id}",
    summary="Delete Model",
    response_model=DeleteModelResponse,
    responses=MODEL_ERRORS,
)
async def delete_model(model_id: str, entity: Entity, storage: StorageDep) -> Response:
    deleted = await storage.delete_model(entity, model_id)
    return JSONBytes({"model_id": model_id, "deleted_checkpoints": deleted, "deleted_run": False})


@router.get(
    MODEL_SUMMARY_PATH.removeprefix(MODELS_PATH),
    summary="Model Summary",
    response_model=ModelSummaryResponse,
    responses=MODEL_ERRORS,
)
async def model_summary(model_id: str, entity: Entity, storage: StorageDep) -> Response:
    summary = await storage.model_summary(entity, model_id)
    return JSONBytes(
        {
            "object": "model.summary",
            "model_id": model_id,
            "checkpoints": summary.checkpoints,
            "latest_step": summary.latest_step,
            "last_update": (
                timestamp(summary.last_update) if summary.last_update is not None else None
            ),
            "files": summary.files,
            "logical_bytes": summary.logical_bytes,
            "stored_bytes": summary.stored_bytes,
        }
    )
