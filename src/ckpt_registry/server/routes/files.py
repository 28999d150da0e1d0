"""A checkpoint's files (shared/CONTRACT.md section 6): upload, list, download with ranges, delete.

Bodies stream: an upload is hashed and staged in the blob store as it arrives, and becomes a file only
once complete and verified; a download streams the blob back. Nothing holds a whole file in memory.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.responses import Response

from ...contract import CHECKPOINTS_PATH, FILES_LIMIT_DEFAULT, FILES_LIMIT_MAX
from ..auth import Entity, StorageDep
from ..bodies import JSONBodyRoute
from ..limits import STREAMED, request_body
from ..responses import JSONBytes
from ..schemas import MODEL_ERRORS, ErrorDetail, FileList, FileResponse, Storable
from ..transfers import (
    BlobsDep,
    SettingsDep,
    download,
    file_body,
    receive_file,
    requested_path,
)


class FilePathConvertor(PathConvertor):
    """Like `path`, but matching every character: a path with a newline must reach the route, which
    answers 422, rather than route nowhere (Starlette's `path` is `.*`, which stops at `\\n`)."""

    regex = "[\\s\\S]*"


register_url_convertor("file_path", FilePathConvertor())

router = APIRouter(
    prefix=CHECKPOINTS_PATH + "/{checkpoint_id}/files", tags=["files"], route_class=JSONBodyRoute
)

# `{path}` is read from the raw URL (`transfers.requested_path`), not as a FastAPI parameter: declared
# here so that the document names it, as a generated client or schemathesis needs it named.
FILE_PATH: dict[str, Any] = {
    "parameters": [
        {
            "name": "path",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
            "description": "The file's path in the checkpoint: `/`-separated segments",
        }
    ]
}


@router.get(
    "",
    summary="List Checkpoint Files",
    response_model=FileList,
    responses=MODEL_ERRORS,
)
async def list_files(
    model_id: str,
    checkpoint_id: str,
    entity: Entity,
    storage: StorageDep,
    # Storable: PostgreSQL refuses a NUL in text (a 500 found by tests/server/test_fuzz.py), so
    # such a cursor is a 422 on both databases, as the same text in a body is.
    after: Annotated[
        Annotated[str, Storable] | None,
        Query(description="Cursor for pagination - the last path of the previous page"),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=FILES_LIMIT_MAX, description="Number of files to return")
    ] = FILES_LIMIT_DEFAULT,
) -> Response:
    page = await storage.list_files(entity, model_id, checkpoint_id, after=after, limit=limit)
    return JSONBytes(
        {
            "object": "list",
            "data": [file_body(record) for record in page.data],
            "has_more": page.has_more,
        }
    )


@router.put(
    "/{path:file_path}",
    openapi_extra=FILE_PATH,
    summary="Upload Checkpoint File",
    status_code=201,
    response_model=FileResponse,
    responses={
        **MODEL_ERRORS,
        200: {"model": FileResponse, "description": "The path already held identical content"},
        409: {"model": ErrorDetail, "description": "The path holds a file with other content"},
        413: {"model": ErrorDetail, "description": "The file is over the size limit"},
        507: {"model": ErrorDetail, "description": "The entity's quota or the disk is full"},
    },
)
@request_body(STREAMED)
async def upload_file(
    model_id: str,
    checkpoint_id: str,
    request: Request,
    entity: Entity,
    storage: StorageDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> Response:
    path = requested_path(request)
    await storage.require_checkpoint(entity, model_id, checkpoint_id)
    upload = await blobs.begin_upload()
    record, created = await receive_file(
        request, upload, storage, settings, entity, model_id, checkpoint_id, path
    )
    return JSONBytes(file_body(record), 201 if created else 200)


@router.head(
    "/{path:file_path}",
    openapi_extra=FILE_PATH,
    summary="Checkpoint File Headers",
    response_class=Response,
    responses={**MODEL_ERRORS, 304: {"description": "If-None-Match names the file's ETag"}},
)
@router.get(
    "/{path:file_path}",
    openapi_extra=FILE_PATH,
    summary="Download Checkpoint File",
    response_class=Response,
    responses={
        **MODEL_ERRORS,
        200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes"},
        206: {"description": "The requested byte range"},
        304: {"description": "If-None-Match names the file's ETag"},
        416: {"description": "The range is not satisfiable"},
    },
)
async def download_file(
    model_id: str,
    checkpoint_id: str,
    request: Request,
    entity: Entity,
    storage: StorageDep,
    blobs: BlobsDep,
) -> Response:
    path = requested_path(request)
    record = await storage.get_file(entity, model_id, checkpoint_id, path)
    return await download(request, record, blobs)


@router.delete(
    "/{path:file_path}",
    openapi_extra=FILE_PATH,
    summary="Delete Checkpoint File",
    status_code=204,
    response_class=Response,
    responses=MODEL_ERRORS,
)
async def delete_file(
    model_id: str, checkpoint_id: str, request: Request, entity: Entity, storage: StorageDep
) -> Response:
    await storage.delete_file(entity, model_id, checkpoint_id, requested_path(request))
    return Response(status_code=204)
