"""Health and system-check: unauthenticated, for load balancers and operators."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ...blobs.errors import BlobStoreUnavailable
from ...contract import API_PREFIX
from ...storage.errors import DatabaseUnavailable
from ..auth import StorageDep
from ..bodies import JSONBodyRoute
from ..responses import JSONBytes
from ..schemas import Health, SystemCheck
from ..transfers import BlobsDep

router = APIRouter(prefix=API_PREFIX, tags=["service"], route_class=JSONBodyRoute)


@router.get("/health", summary="Health", response_model=Health)
async def health() -> Response:
    return JSONBytes({})


@router.get(
    "/system-check",
    summary="System Check",
    response_model=SystemCheck,
    responses={503: {"model": SystemCheck, "description": "A check failed"}},
)
async def system_check(storage: StorageDep, blobs: BlobsDep) -> Response:
    checks = {"database": "ok", "blobs": "ok"}
    try:
        await storage.check()
    except DatabaseUnavailable as exc:
        checks["database"] = exc.message
    try:
        await blobs.check()
    except BlobStoreUnavailable as exc:
        checks["blobs"] = exc.message
    healthy = all(value == "ok" for value in checks.values())
    return JSONBytes(
        {"status": "ok" if healthy else "error", "checks": checks}, 200 if healthy else 503
    )
