"""Moving file bytes: the request path of a file, the limits an upload must keep, streaming an upload
into the blob store and a blob back out (ranges, ETag, 304), shared by the files and uploads routes."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse

from ..blobs import BlobInfo, BlobStore, OnDigest, Upload
from ..contract import file_path_problem
from ..storage.base import FileRecord, Storage
from .auth import READ_METHODS
from .errors import RequestInvalid
from .refusals import Refusal, depends_on
from .settings import Settings

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


async def get_blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def uses_blobs(route: APIRoute, _method: str) -> bool:
    return depends_on(route, get_blobs)


def writes_blobs(route: APIRoute, method: str) -> bool:
    return method not in READ_METHODS and uses_blobs(route, method)


REFUSALS = (
    Refusal(
        503,
        "the blob store does not answer or refuses a write",
        uses_blobs,
        headers=("Retry-After",),
    ),
    Refusal(
        507,
        "the blob store's disk is full, or the entity's quota (`CKPT_ENTITY_QUOTA_BYTES`) is used up",
        writes_blobs,
    ),
)


def file_body(record: FileRecord) -> dict[str, Any]:
    return {"path": record.path, "size_bytes": record.size_bytes, "sha256": record.sha256}


def requested_path(request: Request) -> str:
    """The file path of `.../checkpoints/{checkpoint_id}/files/{path}`, validated.

    Read from the raw request path and decoded as strict UTF-8: the server's own decoding would turn
    invalid UTF-8 into replacement characters, a valid but different path.
    """
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    # "", "v1", "preview", "models", model, "checkpoints", checkpoint, "files", then the path.
    parts = raw.split(b"/", 8)
    encoded = parts[8] if len(parts) == 9 else b""
    try:
        path = unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestInvalid(["path", "path"], "the path must be valid UTF-8 text") from None
    problem = file_path_problem(path)
    if problem is not None:
        raise RequestInvalid(["path", "path"], problem)
    return path


def parse_sha256(value: str, loc: list[str | int]) -> str:
    if not _SHA256_HEX.fullmatch(value):
        raise RequestInvalid(loc, "sha256 must be 64 lowercase hexadecimal characters")
    return value


def content_digest(request: Request) -> str | None:
    """The sha256 declared by `Content-Digest: sha-256=:<base64>:` (RFC 9530), as lowercase hex."""
    header = request.headers.get("content-digest")
    if header is None:
        return None
    for member in header.split(","):
        algorithm, _, value = member.strip().partition("=")
        if algorithm.strip().lower() != "sha-256":
            continue
        value = value.strip()
        try:
            if not (len(value) >= 2 and value[0] == value[-1] == ":"):
                raise ValueError
            digest = base64.b64decode(value[1:-1], validate=True)
        except (ValueError, binascii.Error):
            break
        if len(digest) == 32:
            return digest.hex()
        break
    raise RequestInvalid(
        ["header", "content-digest"],
        "Content-Digest must carry sha-256=:<base64 of the 32-byte digest>:",
    )


def declared_length(request: Request, settings: Settings) -> int | None:
    """`Content-Length`, refused with 413 before any byte is read when over the file size limit."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return None
    if int(length) > settings.max_file_bytes:
        raise too_large(settings)
    return int(length)


def too_large(settings: Settings) -> HTTPException:
    return HTTPException(
        413, f"File too large: the limit is {settings.max_file_bytes} bytes per file"
    )


async def quota_left(storage: Storage, settings: Settings, entity: str) -> int | None:
    """Bytes the entity may still store, or None without a quota; 507 when none are left."""
    if settings.entity_quota_bytes is None:
        return None
    stored = (await storage.usage(entity)).stored_bytes
    left = settings.entity_quota_bytes - stored
    if left <= 0:
        raise quota_exceeded(settings)
    return left


def quota_exceeded(settings: Settings) -> HTTPException:
    return HTTPException(
        507, f"Storage quota exceeded: this entity may store {settings.entity_quota_bytes} bytes"
    )


async def stream_into(
    request: Request, upload: Upload, settings: Settings, room: int | None
) -> None:
    """Append the request body to `upload`, within the file size limit and the quota's `room`."""
    limit = settings.max_file_bytes - upload.offset
    received = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        received += len(chunk)
        if received > limit:
            raise too_large(settings)
        if room is not None and received > room:
            raise quota_exceeded(settings)
        await upload.write(chunk)


async def receive_file(
    request: Request,
    upload: Upload,
    storage: Storage,
    settings: Settings,
    entity: str,
    model_id: str,
    checkpoint_id: str,
    path: str,
) -> tuple[FileRecord, bool]:
    """A whole file from one request body into a new file of the checkpoint.

    Nothing of a body cut short, over a limit or with the wrong digest stays anywhere.
    """
    expected = content_digest(request)
    declared_length(request, settings)
    try:
        room = await quota_left(storage, settings, entity)
        await stream_into(request, upload, settings, room)
        return await complete(
            lambda on_digest: upload.finish(expected, on_digest),
            storage,
            entity,
            model_id,
            checkpoint_id,
            path,
        )
    except BaseException:  # a client gone mid-body (ClientDisconnect) included
        await upload.abort()
        raise


Finish = Callable[[OnDigest], Awaitable[BlobInfo]]


async def complete(
    finish: Finish,
    storage: Storage,
    entity: str,
    model_id: str,
    checkpoint_id: str,
    path: str,
) -> tuple[FileRecord, bool]:
    """Verify the staged bytes (`finish`: an upload's, or a direct upload's), make them a blob and
    the blob a file of the checkpoint.

    The blob's row is touched before the blob becomes visible: the collector never removes a blob
    touched within its grace period, so it cannot remove one this upload is about to reference.
    """

    async def touch(blob: BlobInfo) -> None:
        await storage.touch_blob(blob.sha256, blob.size)

    info = await finish(touch)
    return await storage.attach_file(entity, model_id, checkpoint_id, path, info.sha256, info.size)


# Downloads -------------------------------------------------------------------------------------


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`[start, end)` of a single `Range: bytes=a-b | a- | -n`; None for the whole file (no header,
    or one this server ignores as RFC 9110 allows: another unit, several ranges, a malformed one);
    416 when it cannot be satisfied."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first == "" or first.isdigit()) or not (last == "" or last.isdigit()):
        return None
    if first == "":
        if last == "":
            return None
        if int(last) == 0 or size == 0:
            raise unsatisfiable(size)
        return max(size - int(last), 0), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise unsatisfiable(size)
    return start, min(int(last) + 1, size) if last else size


def unsatisfiable(size: int) -> HTTPException:
    return HTTPException(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})


async def download(request: Request, record: FileRecord, blobs: BlobStore) -> Response:
    etag = f'"{record.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and (
        if_none_match.strip() == "*"
        or etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    ):
        return Response(status_code=304, headers=headers)
    span = byte_range(request.headers.get("range"), record.size_bytes)
    status = 200
    start, end = 0, record.size_bytes
    if span is not None:
        start, end = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{record.size_bytes}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD" or start == end:
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    chunks = blobs.read(record.sha256, start, end)
    # The first chunk before the status line: a blob missing from the store is a clear error, not a
    # connection cut after a 200.
    first = await anext(chunks)
    return StreamingResponse(
        _prepend(first, chunks),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
