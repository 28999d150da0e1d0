"""Uploads that survive a dropped connection, and batch transfers that skip what the entity already holds.

A resumable upload (tus-style): `POST .../checkpoints/{id}/uploads` starts one for a path; `PATCH
/v1/preview/uploads/{id}` with `Upload-Offset: N` appends the body at byte N; `HEAD` says how many bytes
the server has (after a drop, continue from there); `POST .../complete` verifies the digest and makes
the file. `POST .../checkpoints/{id}/transfers` answers a whole folder at once: which files are there
already, which contents the entity holds (attached without sending a byte), and where to send the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from datetime import timedelta
from functools import partial
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ...blobs import BlobStore, Upload
from ...blobs.errors import DigestMismatch
from ...blobs.errors import UploadNotFound as BlobUploadNotFound
from ...contract import CHECKPOINTS_PATH, FILES_LIMIT_MAX, UPLOADS_PATH, file_path_problem
from ...storage.base import FileRecord, Storage
from ...storage.errors import FileNotFound
from ..auth import Entity, Reader, StorageDep, require_write
from ..bodies import JSONBodyRoute
from ..errors import RequestInvalid
from ..limits import STREAMED, request_body
from ..responses import JSONBytes
from ..schemas import MODEL_ERRORS, ErrorDetail, FileResponse
from ..settings import Settings
from ..transfers import (
    BlobsDep,
    Finish,
    SettingsDep,
    complete,
    file_body,
    parse_sha256,
    quota_left,
    stream_into,
)

checkpoint_router = APIRouter(
    prefix=CHECKPOINTS_PATH + "/{checkpoint_id}", tags=["files"], route_class=JSONBodyRoute
)
router = APIRouter(prefix=UPLOADS_PATH, tags=["files"], route_class=JSONBodyRoute)

# One request at a time appends to an upload (per process; across processes the offset check and the
# staged size keep two writers from interleaving).
_upload_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(upload_id: str) -> asyncio.Lock:
    lock = _upload_locks.get(upload_id)
    if lock is None:
        lock = _upload_locks[upload_id] = asyncio.Lock()
    return lock


def _checked_path(path: str, loc: list[str | int]) -> str:
    problem = file_path_problem(path)
    if problem is not None:
        raise RequestInvalid(loc, problem)
    return path


class UploadCreate(BaseModel):
    path: str = Field(description="The file's path in the checkpoint (section 6 path rules)")


class UploadResponse(BaseModel):
    id: str
    path: str
    offset: int = Field(description="Bytes the server holds: the next PATCH starts here")


class UploadComplete(BaseModel):
    sha256: str | None = Field(
        default=None, description="The file's sha256 (lowercase hex); checked when given"
    )


@checkpoint_router.post(
    "/uploads",
    summary="Start Resumable Upload",
    status_code=201,
    response_model=UploadResponse,
    responses=MODEL_ERRORS,
)
async def start_upload(
    model_id: str,
    checkpoint_id: str,
    body: UploadCreate,
    entity: Entity,
    storage: StorageDep,
    blobs: BlobsDep,
) -> Response:
    path = _checked_path(body.path, ["body", "path"])
    await storage.require_checkpoint(entity, model_id, checkpoint_id)
    staged = await blobs.begin_upload(resumable=True)
    await staged.close()
    try:
        session = await storage.create_upload(
            entity, model_id, checkpoint_id, path, str(uuid.UUID(hex=staged.id))
        )
    except BaseException:
        await (await blobs.resume_upload(staged.id)).abort()
        raise
    return JSONBytes({"id": session.id, "path": path, "offset": 0}, 201)


def _staged_id(upload_id: str) -> str:
    """The blob store's name for a session's staged bytes (the same UUID, as plain hex)."""
    return uuid.UUID(upload_id).hex


def _offset_headers(offset: int) -> dict[str, str]:
    return {"Upload-Offset": str(offset), "Cache-Control": "no-store"}


@router.head(
    "/{upload_id}",
    summary="Upload Offset",
    # No body: the answer is the Upload-Offset header (documented as JSON before, which it never was).
    response_class=Response,
    responses={
        **MODEL_ERRORS,
        200: {
            "description": "Where to continue: the bytes received so far",
            "headers": {"Upload-Offset": {"schema": {"type": "integer", "minimum": 0}}},
        },
    },
)
async def upload_offset(
    upload_id: str, entity: Entity, storage: StorageDep, blobs: BlobsDep
) -> Response:
    await storage.get_upload(entity, upload_id)
    async with _lock(upload_id):
        staged = await blobs.resume_upload(_staged_id(upload_id))
        offset = staged.offset
        await staged.close()
    return Response(status_code=200, headers=_offset_headers(offset))


@router.patch(
    "/{upload_id}",
    summary="Append To Upload",
    status_code=204,
    response_class=Response,
    responses={
        **MODEL_ERRORS,
        409: {"model": ErrorDetail, "description": "Upload-Offset is not the server's offset"},
        413: {"model": ErrorDetail, "description": "The file would be over the size limit"},
    },
    # Read by the handler itself (a missing or malformed one is 422 at `["header", "upload-offset"]`).
    openapi_extra={
        "parameters": [
            {
                "name": "Upload-Offset",
                "in": "header",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
                "description": "The byte offset to append at: the server's, as HEAD reports it",
            }
        ]
    },
)
@request_body(STREAMED)
async def append_to_upload(
    upload_id: str,
    request: Request,
    entity: Entity,
    storage: StorageDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> Response:
    declared = request.headers.get("upload-offset")
    if declared is None or not declared.isdigit():
        raise RequestInvalid(
            ["header", "upload-offset"], "Upload-Offset must be the byte offset to append at"
        )
    await storage.get_upload(entity, upload_id)
    lock = _lock(upload_id)
    if lock.locked():
        raise HTTPException(409, "Another request is appending to this upload")
    async with lock:
        staged = await blobs.resume_upload(_staged_id(upload_id))
        try:
            if int(declared) != staged.offset:
                raise HTTPException(
                    409,
                    f"Upload-Offset is {declared} but the server holds {staged.offset} bytes: "
                    "continue from there",
                    headers=_offset_headers(staged.offset),
                )
            room = await quota_left(storage, settings, entity)
            # What arrived before a drop is kept: the client continues from the offset HEAD reports.
            with contextlib.suppress(ClientDisconnect):
                await stream_into(request, staged, settings, room)
            offset = staged.offset
        finally:
            await staged.close()
    return Response(status_code=204, headers=_offset_headers(offset))


@router.post(
    "/{upload_id}/complete",
    summary="Complete Upload",
    status_code=201,
    response_model=FileResponse,
    responses={
        **MODEL_ERRORS,
        200: {"model": FileResponse, "description": "The path already held identical content"},
        409: {"model": ErrorDetail, "description": "The path holds a file with other content"},
    },
)
async def complete_upload(
    upload_id: str,
    entity: Entity,
    storage: StorageDep,
    blobs: BlobsDep,
    body: Annotated[UploadComplete | None, Body()] = None,
) -> Response:
    expected = None
    if body is not None and body.sha256 is not None:
        expected = parse_sha256(body.sha256, ["body", "sha256"])
    session = await storage.get_upload(entity, upload_id)
    staged_id = _staged_id(upload_id)
    async with _lock(upload_id):
        staged: Upload | None
        try:
            staged = await blobs.resume_upload(staged_id)
        except BlobUploadNotFound:
            staged = None  # a direct (presigned) upload: the object is in the store, or nothing is
        finish: Finish
        if staged is not None:
            finish = partial(staged.finish, expected)
        elif expected is None:
            raise RequestInvalid(["body", "sha256"], "a direct upload is completed with its sha256")
        else:
            finish = partial(blobs.complete_presigned_put, staged_id, expected)
        try:
            record, created = await complete(
                finish, storage, entity, session.model_id, session.checkpoint_id, session.path
            )
        except DigestMismatch:
            await storage.end_upload(upload_id)  # the store removed the staged bytes
            raise
        finally:
            if staged is not None:
                await staged.close()  # kept for another try after any other failure
        await storage.end_upload(upload_id)
    return JSONBytes(file_body(record), 201 if created else 200)


@router.delete(
    "/{upload_id}",
    summary="Cancel Upload",
    status_code=204,
    response_class=Response,
    responses=MODEL_ERRORS,
)
async def cancel_upload(
    upload_id: str, entity: Entity, storage: StorageDep, blobs: BlobsDep
) -> Response:
    await storage.get_upload(entity, upload_id)
    async with _lock(upload_id):
        with contextlib.suppress(BlobUploadNotFound):
            await (await blobs.resume_upload(_staged_id(upload_id))).abort()
        await storage.end_upload(upload_id)
    return Response(status_code=204)


# Batch transfers -------------------------------------------------------------------------------


class TransferFile(BaseModel):
    path: str
    sha256: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)


class TransferRequest(BaseModel):
    operation: Literal["upload", "download"]
    files: list[TransferFile] = Field(default_factory=list, max_length=FILES_LIMIT_MAX)


class TransferAction(BaseModel):
    path: str
    sha256: str | None = None
    size_bytes: int | None = None
    action: Literal["exists", "attached", "upload", "download", "conflict", "missing"]
    href: str | None = None
    method: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    upload_id: str | None = Field(
        default=None, description="A direct upload's id: POST `complete` after sending the bytes"
    )
    complete: str | None = None


class TransferResponse(BaseModel):
    operation: Literal["upload", "download"]
    files: list[TransferAction]


def _file_url(model_id: str, checkpoint_id: str, path: str) -> str:
    return (
        CHECKPOINTS_PATH.format(model_id=model_id)
        + f"/{checkpoint_id}/files/{quote(path, safe='/')}"
    )


@checkpoint_router.post(
    "/transfers",
    summary="Batch Transfer",
    response_model=TransferResponse,
    responses=MODEL_ERRORS,
)
async def batch_transfer(
    model_id: str,
    checkpoint_id: str,
    body: TransferRequest,
    caller: Reader,
    storage: StorageDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> Response:
    """For a whole folder at once: `upload` says, per file, whether the checkpoint has it already
    (`exists`), whether it was attached from content the entity already holds without a byte sent
    (`attached`), or where to send it (`upload`); `download` gives each file's URL (presigned when the
    blob store offers them). Held contents are the entity's own: nothing is said of other entities.
    A `download` only reads (a read-only key may ask); an `upload` may attach files: it writes."""
    if body.operation != "download":
        require_write(caller)
    entity = caller.entity
    await storage.require_checkpoint(entity, model_id, checkpoint_id)
    if body.operation == "download":
        return JSONBytes(
            {
                "operation": "download",
                "files": await _downloads(
                    body, model_id, checkpoint_id, entity, storage, blobs, settings
                ),
            }
        )
    wanted: list[tuple[str, str, int]] = []
    for index, item in enumerate(body.files):
        path = _checked_path(item.path, ["body", "files", index, "path"])
        if item.sha256 is None or item.size_bytes is None:
            raise RequestInvalid(
                ["body", "files", index], "an upload names each file's sha256 and size_bytes"
            )
        wanted.append(
            (path, parse_sha256(item.sha256, ["body", "files", index, "sha256"]), item.size_bytes)
        )
    held = await storage.held_contents(entity, sorted({sha for _, sha, _ in wanted}))
    answers: list[dict[str, Any]] = []
    for path, sha256, size in wanted:
        answer: dict[str, Any] = {"path": path, "sha256": sha256, "size_bytes": size}
        try:
            existing = await storage.get_file(entity, model_id, checkpoint_id, path)
        except FileNotFound:
            existing = None
        if existing is not None:
            answer["action"] = "exists" if existing.sha256 == sha256 else "conflict"
        elif held.get(sha256) == size and await _attach_held(
            storage, blobs, entity, model_id, checkpoint_id, path, sha256, size
        ):
            answer["action"] = "attached"
        else:
            answer |= await _upload_action(
                storage, blobs, settings, entity, model_id, checkpoint_id, path, sha256, size
            )
        answers.append(answer)
    return JSONBytes({"operation": "upload", "files": answers})


async def _upload_action(
    storage: Storage,
    blobs: BlobStore,
    settings: Settings,
    entity: str,
    model_id: str,
    checkpoint_id: str,
    path: str,
    sha256: str,
    size: int,
) -> dict[str, Any]:
    """Where to send a file: straight to the blob store when it presigns (then `POST complete` with
    the sha256), else a PUT to the files route."""
    presigned = None
    if settings.presign:
        presigned = await blobs.presign_put(
            sha256, size, timedelta(seconds=settings.presign_expires_seconds)
        )
    if presigned is None:
        return {
            "action": "upload",
            "href": _file_url(model_id, checkpoint_id, path),
            "method": "PUT",
            "headers": {},
        }
    upload_id = str(uuid.UUID(hex=presigned.upload_id))
    await storage.create_upload(entity, model_id, checkpoint_id, path, upload_id)
    return {
        "action": "upload",
        "href": presigned.url,
        "method": "PUT",
        "headers": presigned.headers,
        "upload_id": upload_id,
        "complete": f"{UPLOADS_PATH}/{upload_id}/complete",
    }


async def _attach_held(
    storage: Storage,
    blobs: BlobStore,
    entity: str,
    model_id: str,
    checkpoint_id: str,
    path: str,
    sha256: str,
    size: int,
) -> bool:
    # Touch first, then check the object: a collector that removed the blob before the touch left
    # no object behind (then the client uploads it), and after the touch it leaves it alone.
    await storage.touch_blob(sha256, size)
    if await blobs.stat(sha256) != size:
        return False
    record, _ = await storage.attach_file(entity, model_id, checkpoint_id, path, sha256, size)
    return bool(record.sha256 == sha256)


async def _downloads(
    body: TransferRequest,
    model_id: str,
    checkpoint_id: str,
    entity: str,
    storage: Storage,
    blobs: BlobStore,
    settings: Settings,
) -> list[dict[str, Any]]:
    records: list[FileRecord | str] = []  # a path alone: no such file
    if body.files:
        for index, item in enumerate(body.files):
            path = _checked_path(item.path, ["body", "files", index, "path"])
            try:
                records.append(await storage.get_file(entity, model_id, checkpoint_id, path))
            except FileNotFound:
                records.append(path)
    else:
        page = await storage.list_files(
            entity, model_id, checkpoint_id, after=None, limit=FILES_LIMIT_MAX
        )
        records.extend(page.data)
    answers: list[dict[str, Any]] = []
    for record in records:
        if isinstance(record, str):
            answers.append({"path": record, "action": "missing"})
            continue
        href = None
        if settings.presign:
            href = await blobs.presign_get(
                record.sha256,
                timedelta(seconds=settings.presign_expires_seconds),
                record.path.rsplit("/", 1)[-1],
            )
        answers.append(
            {
                **file_body(record),
                "action": "download",
                "href": href or _file_url(model_id, checkpoint_id, record.path),
                "method": "GET",
                "headers": {},
            }
        )
    return answers
