"""Moving a checkpoint's files: a folder (or one file) up, a checkpoint's files down to a folder.

Written once, on ``AsyncClient``; ``Client`` runs the same code on a private event loop.

Up: every file is hashed locally, then one batch request per 1,000 files (``transfers``, after the
git-lfs batch API) says which the checkpoint has already (``exists``), which the entity holds and the
server attached without a byte sent (``attached``), and where to send the rest. Small files go in
one ``PUT`` (retried whole); larger ones through a resumable upload, which after a dropped
connection asks the server how many bytes it kept (``HEAD``) and continues from there. On S3 the
server hands out presigned URLs and the bytes go straight to the bucket, then ``complete``.

Down: the file list (paged), then each file streamed into ``<name>.partial`` beside its final name,
hashed as it arrives, and renamed into place only when its sha256 matches. A file already on disk
with the right size and sha256 is skipped; a ``.partial`` left by an interrupted run is continued
with a ``Range`` request. Memory stays flat: files move in 1 MiB pieces.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import httpx

from ..contract import FILES_LIMIT_MAX, UPLOADS_PATH, file_path_problem
from ._base import APIRequest, path_segment
from .errors import (
    APIConnectionError,
    APIStatusError,
    CkptError,
    ConflictError,
    FileConflictError,
    FileIntegrityError,
)

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = [
    "DEFAULT_PARALLEL",
    "DownloadResult",
    "FileInfo",
    "Progress",
    "UploadResult",
    "download_files",
    "list_files",
    "upload_files",
]

#: Files moved at once, unless the caller says otherwise.
DEFAULT_PARALLEL = 4
#: Files up to this size go in one PUT; larger ones through a resumable upload.
SINGLE_PUT_BYTES = 16 * 1024 * 1024
PIECE_BYTES = 1024 * 1024
PARTIAL_SUFFIX = ".partial"
#: How often one file's transfer is resumed after a dropped connection before giving up.
MAX_RESUMES = 5


class Progress(Protocol):
    """Told how a transfer goes (the CLI draws a progress bar from it). Called on the event loop's
    thread (for ``Client``, a private one): keep it quick."""

    def start(self, files: int, total_bytes: int) -> None:
        """What is about to move (files to send or fetch, and their bytes)."""

    def advance(self, path: str, nbytes: int) -> None:
        """``nbytes`` more of ``path`` moved (negative when a resume starts again from earlier)."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A file of a checkpoint, as the registry lists it."""

    path: str
    size_bytes: int
    sha256: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FileInfo:
        return cls(path=body["path"], size_bytes=body["size_bytes"], sha256=body["sha256"])


@dataclass(slots=True)
class UploadResult:
    """What an upload did with each file: ``uploaded`` (bytes sent), ``attached`` (the entity held
    the content: no byte sent), ``unchanged`` (the checkpoint had it already)."""

    uploaded: list[str] = field(default_factory=list)
    attached: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_sent: int = 0


@dataclass(slots=True)
class DownloadResult:
    """``downloaded``: fetched and verified; ``unchanged``: already on disk with the right sha256."""

    downloaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_received: int = 0


@dataclass(frozen=True, slots=True)
class _LocalFile:
    path: str  # in the checkpoint, `/`-separated
    source: Path
    size_bytes: int
    sha256: str


class _NoProgress:
    def start(self, files: int, total_bytes: int) -> None:
        pass

    def advance(self, path: str, nbytes: int) -> None:
        pass


def _checkpoint_path(model_id: str, checkpoint_id: str) -> str:
    return f"preview/models/{path_segment(model_id)}/checkpoints/{path_segment(checkpoint_id)}"


async def _all(calls: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the calls concurrently; the first failure stops the rest and is raised as it is (not
    wrapped in an ExceptionGroup), so callers catch FileIntegrityError and the like directly."""

    async def run(call: Coroutine[Any, Any, None]) -> None:
        await call

    try:
        async with anyio.create_task_group() as group:
            for call in calls:
                group.start_soon(run, call)
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


# Local files ------------------------------------------------------------------------------------


def _sources(source: Path) -> list[tuple[str, Path]]:
    """(checkpoint path, local file) for a file or every regular file under a folder, sorted."""
    if source.is_file():
        return [(source.name, source)]
    if not source.is_dir():
        raise CkptError(f"{source}: no such file or folder")
    found: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            local = Path(folder, name)
            if local.is_file():
                found.append((local.relative_to(source).as_posix(), local))
    bad = [(path, problem) for path, _ in found if (problem := file_path_problem(path)) is not None]
    if bad:
        path, problem = bad[0]
        raise CkptError(f"{path!r} cannot be a checkpoint file path: {problem}")
    return found


def _sha256_of(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb", buffering=0) as file:
        while left is None or left > 0:
            piece = file.read(PIECE_BYTES if left is None else min(PIECE_BYTES, left))
            if not piece:
                break
            digest.update(piece)
            if left is not None:
                left -= len(piece)
    return digest.hexdigest()


async def _hash_all(found: list[tuple[str, Path]], parallel: int) -> list[_LocalFile]:
    limiter = anyio.CapacityLimiter(parallel)
    hashed: dict[str, _LocalFile] = {}

    async def one(path: str, local: Path) -> None:
        size = local.stat().st_size
        digest = await anyio.to_thread.run_sync(_sha256_of, local, limiter=limiter)
        hashed[path] = _LocalFile(path, local, size, digest)

    await _all(one(path, local) for path, local in found)
    return [hashed[path] for path, _ in found]


async def _read_pieces(
    source: Path, start: int, path: str, progress: Progress, read: list[int]
) -> AsyncIterator[bytes]:
    """The file from byte `start`, in pieces read on a thread; counts them into `read[0]`."""
    file = await anyio.open_file(source, "rb", buffering=0)
    try:
        await file.seek(start)
        while piece := await file.read(PIECE_BYTES):
            read[0] += len(piece)
            progress.advance(path, len(piece))
            yield piece
    finally:
        await file.aclose()


# Upload -----------------------------------------------------------------------------------------


async def upload_files(
    client: AsyncClient,
    model_id: str,
    checkpoint_id: str,
    source: Path,
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: Progress | None = None,
) -> UploadResult:
    if parallel < 1:
        raise ValueError("parallel must be >= 1")
    progress = progress or _NoProgress()
    files = await _hash_all(_sources(Path(source)), parallel)
    base = _checkpoint_path(model_id, checkpoint_id)
    actions: list[tuple[_LocalFile, dict[str, Any]]] = []
    for start in range(0, len(files), FILES_LIMIT_MAX):
        batch = files[start : start + FILES_LIMIT_MAX]
        answer = await client._send(
            APIRequest(
                "POST",
                f"{base}/transfers",
                lambda r: r.json(),
                idempotent=True,
                json={
                    "operation": "upload",
                    "files": [
                        {"path": f.path, "sha256": f.sha256, "size_bytes": f.size_bytes}
                        for f in batch
                    ],
                },
            )
        )
        actions.extend(zip(batch, answer["files"], strict=True))
    conflicts = [f.path for f, action in actions if action["action"] == "conflict"]
    if conflicts:
        raise FileConflictError(conflicts)
    result = UploadResult()
    to_send = [(f, action) for f, action in actions if action["action"] == "upload"]
    for f, action in actions:
        if action["action"] == "exists":
            result.unchanged.append(f.path)
        elif action["action"] == "attached":
            result.attached.append(f.path)
    progress.start(len(to_send), sum(f.size_bytes for f, _ in to_send))
    limiter = anyio.Semaphore(parallel)
    sent = [0]

    async def send(f: _LocalFile, action: dict[str, Any]) -> None:
        async with limiter:
            await _send_file(client, base, f, action, progress, sent)
        result.uploaded.append(f.path)

    await _all(send(f, action) for f, action in to_send)
    for paths in (result.uploaded, result.attached, result.unchanged):
        paths.sort()
    result.bytes_sent = sent[0]
    return result


async def _send_file(
    client: AsyncClient,
    base: str,
    f: _LocalFile,
    action: dict[str, Any],
    progress: Progress,
    sent: list[int],
) -> None:
    if action.get("upload_id"):
        await _send_presigned(client, f, action, progress, sent)
    elif f.size_bytes <= SINGLE_PUT_BYTES:
        data = await anyio.Path(f.source).read_bytes()
        if len(data) != f.size_bytes or hashlib.sha256(data).hexdigest() != f.sha256:
            raise CkptError(f"{f.source} changed while it was being uploaded")
        await client._send(
            APIRequest(
                action["method"],
                action["href"],
                _ignore,
                idempotent=True,  # the same bytes to the same path: 200 the second time
                content=data,
                headers={"Content-Digest": _content_digest(f.sha256)},
            )
        )
        sent[0] += len(data)
        progress.advance(f.path, len(data))
    else:
        await _send_resumable(client, base, f, progress, sent)


def _content_digest(sha256: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"


def _ignore(_response: httpx.Response) -> None:
    return None


async def _send_presigned(
    client: AsyncClient,
    f: _LocalFile,
    action: dict[str, Any],
    progress: Progress,
    sent: list[int],
) -> None:
    """Straight to the blob store (one PUT, started again after a drop), then `complete`."""
    for attempt in range(MAX_RESUMES + 1):
        read = [0]
        try:
            await client._send(
                APIRequest(
                    action["method"],
                    action["href"],
                    _ignore,
                    idempotent=False,
                    content=_read_pieces(f.source, 0, f.path, progress, read),
                    headers={**action.get("headers", {}), "Content-Length": str(f.size_bytes)},
                    authenticated=False,
                )
            )
            sent[0] += read[0]
            break
        except (APIConnectionError, APIStatusError) as exc:
            progress.advance(f.path, -read[0])  # sent again from byte 0
            if attempt == MAX_RESUMES or (
                isinstance(exc, APIStatusError) and exc.status_code < 500
            ):
                raise
            await anyio.sleep(client.retry_policy.backoff(attempt))
    await _complete(client, action["complete"], f)


async def _complete(client: AsyncClient, href: str, f: _LocalFile) -> None:
    try:
        await client._send(
            APIRequest("POST", href, _ignore, idempotent=True, json={"sha256": f.sha256})
        )
    except ConflictError as exc:
        raise FileConflictError([f.path]) from exc


async def _send_resumable(
    client: AsyncClient, base: str, f: _LocalFile, progress: Progress, sent: list[int]
) -> None:
    upload_id = await client._send(
        APIRequest(
            "POST",
            f"{base}/uploads",
            lambda r: r.json()["id"],
            idempotent=False,
            json={"path": f.path},
        )
    )
    target = f"{UPLOADS_PATH.removeprefix('/v1/')}/{path_segment(upload_id)}"
    offset = 0
    for attempt in range(MAX_RESUMES + 1):
        read = [0]  # this attempt's bytes (`sent` is shared by the files moving in parallel)
        try:
            await client._send(
                APIRequest(
                    "PATCH",
                    target,
                    _ignore,
                    idempotent=False,
                    content=_read_pieces(f.source, offset, f.path, progress, read),
                    headers={
                        "Upload-Offset": str(offset),
                        "Content-Length": str(f.size_bytes - offset),
                    },
                )
            )
        except (APIConnectionError, APIStatusError) as exc:
            # A drop or a server error: ask where the server is and go on from there. A 409 is
            # another offset than ours (an earlier attempt got further than we knew).
            if attempt == MAX_RESUMES or (
                isinstance(exc, APIStatusError) and exc.status_code != 409 and exc.status_code < 500
            ):
                raise
            await anyio.sleep(client.retry_policy.backoff(attempt))
        held = await client._send(
            APIRequest("HEAD", target, lambda r: int(r.headers["upload-offset"]), idempotent=True)
        )
        # Bytes read but not kept by the server are sent again: take them off the count.
        lost = offset + read[0] - held
        sent[0] += read[0] - lost
        if lost:
            progress.advance(f.path, -lost)
        offset = held
        if offset >= f.size_bytes:
            break
    else:
        raise CkptError(f"{f.path}: the upload did not finish after {MAX_RESUMES} resumes")
    await _complete(client, f"{target}/complete", f)


# Download ---------------------------------------------------------------------------------------


async def list_files(client: AsyncClient, model_id: str, checkpoint_id: str) -> list[FileInfo]:
    """Every file of the checkpoint, by path (all pages)."""
    base = _checkpoint_path(model_id, checkpoint_id)
    files: list[FileInfo] = []
    after: str | None = None
    while True:
        page = await client._send(
            APIRequest(
                "GET",
                f"{base}/files",
                lambda r: r.json(),
                idempotent=True,
                params={"limit": FILES_LIMIT_MAX, "after": after},
            )
        )
        files.extend(FileInfo.from_json(item) for item in page["data"])
        if not page["has_more"] or not page["data"]:
            return files
        after = files[-1].path


def _target(dest: Path, path: str) -> Path:
    problem = file_path_problem(path)
    if problem is not None:  # the server checks paths too; never write outside `dest` on its word
        raise CkptError(f"the registry named a file {path!r} that cannot be written: {problem}")
    return dest.joinpath(*path.split("/"))


def _on_disk(target: Path, info: FileInfo) -> bool:
    try:
        if target.stat().st_size != info.size_bytes:
            return False
    except FileNotFoundError:
        return False
    return _sha256_of(target) == info.sha256


async def download_files(
    client: AsyncClient,
    model_id: str,
    checkpoint_id: str,
    dest: Path,
    *,
    paths: Sequence[str] | None = None,
    parallel: int = DEFAULT_PARALLEL,
    progress: Progress | None = None,
) -> DownloadResult:
    if parallel < 1:
        raise ValueError("parallel must be >= 1")
    progress = progress or _NoProgress()
    dest = Path(dest)
    files = await list_files(client, model_id, checkpoint_id)
    if paths is not None:
        wanted = set(paths)
        files = [info for info in files if info.path in wanted]
        missing = sorted(wanted - {info.path for info in files})
        if missing:
            raise CkptError(f"the checkpoint has no file {missing[0]!r}")
    result = DownloadResult()
    limiter = anyio.CapacityLimiter(parallel)
    fetch: list[FileInfo] = []
    for info in files:
        if await anyio.to_thread.run_sync(
            _on_disk, _target(dest, info.path), info, limiter=limiter
        ):
            result.unchanged.append(info.path)
        else:
            fetch.append(info)
    hrefs: dict[str, str] = {}
    base = _checkpoint_path(model_id, checkpoint_id)
    for start in range(0, len(fetch), FILES_LIMIT_MAX):
        batch = fetch[start : start + FILES_LIMIT_MAX]
        answer = await client._send(
            APIRequest(
                "POST",
                f"{base}/transfers",
                lambda r: r.json(),
                idempotent=True,
                json={"operation": "download", "files": [{"path": i.path} for i in batch]},
            )
        )
        for action in answer["files"]:
            if action["action"] == "download":
                hrefs[action["path"]] = action["href"]
    progress.start(len(fetch), sum(info.size_bytes for info in fetch))
    received = [0]
    semaphore = anyio.Semaphore(parallel)

    async def one(info: FileInfo) -> None:
        href = hrefs.get(info.path)
        if href is None:
            raise CkptError(f"{info.path} was deleted from the checkpoint during the download")
        async with semaphore:
            await _fetch_file(client, href, info, _target(dest, info.path), progress, received)
        result.downloaded.append(info.path)

    await _all(one(info) for info in fetch)
    result.downloaded.sort()
    result.unchanged.sort()
    result.bytes_received = received[0]
    return result


async def _fetch_file(
    client: AsyncClient,
    href: str,
    info: FileInfo,
    target: Path,
    progress: Progress,
    received: list[int],
) -> None:
    """`href` into `target`, through `<target>.partial`; renamed into place once its sha256 matches."""
    await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    digest = hashlib.sha256()
    have = 0
    if await anyio.Path(partial).exists():
        have = (await anyio.Path(partial).stat()).st_size
        if have > info.size_bytes:
            have = 0
        else:
            # What an interrupted run left: hashed again, then continued with a Range request.
            digest = await anyio.to_thread.run_sync(_hash_prefix, partial, have)
            progress.advance(info.path, have)
    else:
        await anyio.Path(partial).write_bytes(b"")  # an empty file needs no request at all
    presigned = "://" in href
    for attempt in range(MAX_RESUMES + 1):
        if have >= info.size_bytes:
            break
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            response = await client._send(
                APIRequest(
                    "GET",
                    href,
                    lambda r: r,
                    idempotent=True,
                    headers=headers,
                    stream=True,
                    authenticated=not presigned,
                )
            )
            try:
                if have and response.status_code != 206:
                    have, digest = 0, hashlib.sha256()  # the server sent it all again
                async with await anyio.open_file(partial, "ab" if have else "wb") as out:
                    pending = (
                        bytearray()
                    )  # written in 1 MiB pieces, and whatever came before a drop
                    try:
                        async for piece in response.aiter_bytes():
                            pending += piece
                            digest.update(piece)
                            have += len(piece)
                            received[0] += len(piece)
                            progress.advance(info.path, len(piece))
                            if len(pending) >= PIECE_BYTES:
                                await out.write(bytes(pending))
                                pending.clear()
                    finally:
                        await out.write(bytes(pending))
            finally:
                await response.aclose()
        except (httpx.TransportError, APIConnectionError):
            if attempt == MAX_RESUMES:
                raise
            await anyio.sleep(client.retry_policy.backoff(attempt))
    actual = digest.hexdigest()
    if have != info.size_bytes or actual != info.sha256:
        await anyio.Path(partial).unlink(missing_ok=True)
        raise FileIntegrityError(info.path, info.sha256, actual)
    await anyio.to_thread.run_sync(os.replace, partial, target)


def _hash_prefix(path: Path, size: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        left = size
        while left > 0 and (piece := file.read(min(PIECE_BYTES, left))):
            digest.update(piece)
            left -= len(piece)
    return digest


# For `Client`: the async code on an event loop of its own -----------------------------------------


def run_sync(call: Callable[[], Any]) -> Any:
    """Run the coroutine `call()` makes on a fresh event loop in a worker thread (so a caller with a
    running loop of its own, a notebook say, is not disturbed)."""
    with ThreadPoolExecutor(1, thread_name_prefix="ckpt-transfer") as pool:
        return pool.submit(anyio.run, call).result()
