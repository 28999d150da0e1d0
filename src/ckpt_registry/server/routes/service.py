"""Health and system-check: unauthenticated, for load balancers and operators."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ...contract import API_PREFIX
from ...storage.errors import DatabaseUnavailable
from ..auth import StorageDep
from ..responses import JSONBytes
from ..schemas import Health, SystemCheck

router = APIRouter(prefix=API_PREFIX, tags=["service"])


@router.get("/health", summary="Health", response_model=Health)
async def health() -> Response:
    return JSONBytes({})


@router.get(
    "/system-check",
    summary="System Check",
    response_model=SystemCheck,
    responses={503: {"model": SystemCheck, "description": "A check failed"}},
)
async def system_check(storage: StorageDep) -> Response:
    try:
        await storage.check()
    except DatabaseUnavailable as exc:
        return JSONBytes({"status": "error", "checks": {"database": exc.message}}, 503)
    return JSONBytes({"status": "ok", "checks": {"database": "ok"}})
