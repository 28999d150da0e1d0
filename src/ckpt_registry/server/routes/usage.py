"""What the key's entity stores: checkpoints, files, and their bytes counted per file and per content."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ...contract import USAGE_PATH
from ..auth import Entity, StorageDep
from ..bodies import JSONBodyRoute
from ..responses import JSONBytes
from ..schemas import UsageResponse

router = APIRouter(tags=["files"], route_class=JSONBodyRoute)


@router.get(
    USAGE_PATH,
    summary="Usage",
    response_model=UsageResponse,
)
async def usage(entity: Entity, storage: StorageDep) -> Response:
    used = await storage.usage(entity)
    return JSONBytes(
        {
            "entity": used.entity,
            "checkpoints": used.checkpoints,
            "files": used.files,
            "logical_bytes": used.logical_bytes,
            "stored_bytes": used.stored_bytes,
        }
    )
