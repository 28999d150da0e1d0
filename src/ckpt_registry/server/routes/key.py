"""`GET /v1/preview/key`: what the presented key may do, so a client (the dashboard, a script) can
hide what it would be refused rather than try it."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ...contract import KEY_PATH
from ..auth import Reader
from ..bodies import JSONBodyRoute
from ..responses import JSONBytes
from ..schemas import KeyResponse

router = APIRouter(tags=["keys"], route_class=JSONBodyRoute)


@router.get(
    KEY_PATH,
    summary="The Presented Key",
    response_model=KeyResponse,
)
async def presented_key(caller: Reader) -> Response:
    return JSONBytes({"entity": caller.entity, "read_only": caller.read_only})
