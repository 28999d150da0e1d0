"""Moving a checkpoint's files: a folder (or one file) up, a checkpoint's files down to a folder.

Written once, on ``AsyncClient``; ``Client`` runs the same code on an event loop of its own
(:func:`run_sync`). The wire surface is shared/CONTRACT.md section 6 and docs/api.md ("Files").

Up: every file is hashed locally, then one batch request per 1,000 files (``transfers``) says which
the checkpoint has already (``exists``), which the entity holds and the server attached without a
byte sent (``attached``), and where to send the rest. Files up to ``resumable_above`` bytes go in one
``PUT`` (sent again whole after a drop); larger ones through a resumable upload, which after a
dropped connection asks the server how many bytes it kept (``HEAD``) and continues from there. When
the server presigns (S3), the bytes go straight to the bucket, then ``complete``.

Down: each file is streamed into ``<name>.partial`` beside its final name, hashed as it arrives, and
renamed into place only when its sha256 matches. A file already on disk with the right size and
sha256 is skipped; a ``.partial`` left by an interrupted run is continued with a ``Range`` request.
Memory stays flat: files move in pieces of at most 1 MiB.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import httpx

from ..contract import FILES_LIMIT_MAX, UPLOADS_PATH, file_path_problem
from ._base import APIRequest, path_segment
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    CkptError,
    ConflictError,
    FileConflictError,
    FileIntegrityError,
)
from .types import (
    CheckpointDetail,
    DownloadResult,
    FileInfo,
    SortMode,
    TransferProgress,
    UploadResult,
)

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = [
    "DEFAULT_PARALLEL",
    "PARTIAL_SUFFIX",
    "RESUMABLE_ABOVE",
    "ProgressCallback",
    "choose_checkpoint",
    "download_files",
    "list_files",
    "merge_plan",
    "register_or_merge",
    "run_sync",
    "upload_files",
]

T = TypeVar("T")

#: Files moved at once unless the caller says otherwise: enough to hide a request's round trip
#: and the server's per-file work, few enough not to thrash a disk.
DEFAULT_PARALLEL = 4
#: Files larger than this go through a resumable upload, which continues after a drop from the
#: bytes the server kept; smaller ones in one ``PUT``, sent again whole after a drop. Not lower: a
#: resumable upload costs three requests, and the server (local store) hashes the staged bytes again
#: at ``complete``, which on a busy 2-core machine took the SDK from ~0.9 to ~0.45 of curl's rate
#: for 128 MiB files (benchmarks/sdk_transfer.py).
RESUMABLE_ABOVE = 256 * 1024 * 1024
PIECE_BYTES = 1024 * 1024
PARTIAL_SUFFIX = ".partial"
#: Batches of received bytes (PIECE_BYTES each) waiting for the writer: memory per download.
WRITE_QUEUE = 4
#: How often one file's transfer continues after a dropped connection before giving up.
MAX_RESUMES = 5

#: Called after each piece of a transfer moves (on the transfer's thread: keep it quick).
ProgressCallback = Callable[[TransferProgress], None]


class _Tracker:
    """The running totals a progress callback sees; each file reports where it is, so a retry or
    a resume that starts a file again from an earlier offset never counts a byte twice."""

    def __init__(
        self,
        operation: Literal["upload", "download"],
        callback: ProgressCallback | None,
        sizes: dict[str, int],
    ) -> None:
        self.operation: Literal["upload", "download"] = operation
        self.callback = callback
        self.sizes = sizes
        self.total = sum(sizes.values())
        self.at: dict[str, int] = dict.fromkeys(sizes, 0)
        self.done = 0
        self.files_done = 0

    def position(self, path: str, file_bytes: int) -> None:
        self.done += file_bytes - self.at[path]
        self.at[path] = file_bytes
        self._tell(path)

    def finished(self, path: str) -> None:
        self.position(path, self.sizes[path])
        self.files_done += 1
        self._tell(path)

    def _tell(self, path: str) -> None:
        if self.callback is not None:
            self.callback(
                TransferProgress(
                    operation=self.operation,
                    path=path,
                    file_bytes=self.at[path],
                    file_size=self.sizes[path],
                    bytes_done=self.done,
                    bytes_total=self.total,
                    files_done=self.files_done,
                    files_total=len(self.sizes),
                )
            )


def _checkpoint_path(model_id: str, checkpoint_id: str) -> str:
    return f"preview/models/{path_segment(model_id)}/checkpoints/{path_segment(checkpoint_id)}"


def _ignore(_response: httpx.Response) -> None:
    return None


def _json(response: httpx.Response) -> Any:
    return response.json()


async def _all(calls: Iterable[Coroutine[Any, Any, None]], parallel: int) -> None:
    """Run the calls, ``parallel`` at a time; the first failure stops the rest and is raised as
    it is (not wrapped in an ExceptionGroup), so callers catch FileIntegrityError and the like."""
    limiter = anyio.Semaphore(parallel)

    async def run(call: Coroutine[Any, Any, None]) -> None:
        async with limiter:
            await call

    try:
        async with anyio.create_task_group() as group:
            for call in calls:
                group.start_soon(run, call)
    except BaseExceptionGroup as failed:
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


# Local files ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LocalFile:
    path: str  # in the checkpoint, `/`-separated
    source: Path
    size_bytes: int
    sha256: str


def _sources(source: Path) -> list[tuple[str, Path]]:
    """(checkpoint path, local file) for a file, or for every regular file under a folder, sorted."""
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
    for path, _ in found:
        problem = file_path_problem(path)
        if problem is not None:
            raise CkptError(f"{path!r} cannot be a checkpoint file path: {problem}")
    return found


def _sha256_of(path: Path, limit: int | None = None) -> hashlib._Hash:
    """The sha256 state of the file's first ``limit`` bytes (all of it by default)."""
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
    return digest


async def _hash_all(found: list[tuple[str, Path]], parallel: int) -> list[_LocalFile]:
    hashed: dict[str, _LocalFile] = {}

    async def one(path: str, local: Path) -> None:
        size = local.stat().st_size
        digest = await anyio.to_thread.run_sync(_sha256_of, local)
        hashed[path] = _LocalFile(path, local, size, digest.hexdigest())

    await _all((one(path, local) for path, local in found), parallel)
    return [hashed[path] for path, _ in found]


class _FileBody:
    """A file's bytes from ``start``, read on a thread in 1 MiB pieces. Iterable again (each pass
    reads from ``start`` anew), so a request that must be sent again can be."""

    def __init__(self, f: _LocalFile, start: int, tracker: _Tracker) -> None:
        self._f = f
        self._start = start
        self._tracker = tracker

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        self._tracker.position(self._f.path, self._start)
        file = await anyio.open_file(self._f.source, "rb", buffering=0)
        try:
            await file.seek(self._start)
            left = self._f.size_bytes - self._start
            while left > 0:
                piece = await file.read(min(PIECE_BYTES, left))
                if not piece:
                    raise CkptError(f"{self._f.source} shrank while it was being uploaded")
                left -= len(piece)
                self._tracker.position(self._f.path, self._f.size_bytes - left)
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
    progress: ProgressCallback | None = None,
    resumable_above: int | None = None,
) -> UploadResult:
    """Upload ``source`` (a folder, or one file) to the checkpoint; see the module's docstring."""
    if resumable_above is None:
        resumable_above = RESUMABLE_ABOVE  # read now, so it can be set for a whole program
    if parallel < 1:
        raise ValueError("parallel must be >= 1")
    files = await _hash_all(_sources(Path(source)), parallel)
    base = _checkpoint_path(model_id, checkpoint_id)
    actions: list[tuple[_LocalFile, dict[str, Any]]] = []
    for start in range(0, len(files), FILES_LIMIT_MAX):
        batch = files[start : start + FILES_LIMIT_MAX]
        # Retried like any idempotent request: with presigning on, a lost answer leaves the direct
        # uploads it began on the server for the collector, nothing else.
        answer = await client._send(
            APIRequest(
                "POST",
                f"{base}/transfers",
                _json,
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
    result = UploadResult(checkpoint_id=checkpoint_id)
    to_send: list[tuple[_LocalFile, dict[str, Any]]] = []
    for f, action in actions:
        if action["action"] in ("exists", "attached"):
            result.skipped.append(f.path)
            result.bytes_skipped += f.size_bytes
        else:
            to_send.append((f, action))
    tracker = _Tracker("upload", progress, {f.path: f.size_bytes for f, _ in to_send})

    async def send(f: _LocalFile, action: dict[str, Any]) -> None:
        if action.get("upload_id"):
            await _send_presigned(client, f, action, tracker)
        elif f.size_bytes <= resumable_above:
            await _send_whole(client, f, action, tracker)
        else:
            resumed = await _send_resumable(client, base, f, tracker)
            if resumed:
                result.resumed[f.path] = resumed
        tracker.finished(f.path)
        result.sent.append(f.path)
        result.bytes_sent += f.size_bytes

    await _all((send(f, action) for f, action in to_send), parallel)
    result.sent.sort()
    return result


def _content_digest(sha256: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"


async def _send_whole(
    client: AsyncClient, f: _LocalFile, action: dict[str, Any], tracker: _Tracker
) -> None:
    """One PUT to the files route; the server checks the declared digest (a file that changed
    since it was hashed is refused, 422, and nothing is stored)."""
    try:
        await client._send(
            APIRequest(
                action["method"],
                action["href"],
                _ignore,
                idempotent=True,  # the same bytes at the same path again: 200
                content=_FileBody(f, 0, tracker),
                headers={
                    **action.get("headers", {}),
                    "Content-Length": str(f.size_bytes),
                    "Content-Digest": _content_digest(f.sha256),
                },
            )
        )
    except ConflictError as exc:
        raise FileConflictError([f.path]) from exc


async def _send_presigned(
    client: AsyncClient, f: _LocalFile, action: dict[str, Any], tracker: _Tracker
) -> None:
    """Straight to the blob store (one PUT, sent again from byte 0 after a drop: a presigned PUT
    cannot be continued), then ``complete``, where the server checks the digest."""
    await client._send(
        APIRequest(
            action["method"],
            action["href"],
            _ignore,
            idempotent=True,  # the same bytes to the same staging key
            content=_FileBody(f, 0, tracker),
            headers={**action.get("headers", {}), "Content-Length": str(f.size_bytes)},
            authenticated=False,
        )
    )
    await _complete(client, action["complete"], f)


async def _complete(client: AsyncClient, href: str, f: _LocalFile) -> None:
    try:
        await client._send(
            APIRequest("POST", href, _ignore, idempotent=True, json={"sha256": f.sha256})
        )
    except ConflictError as exc:
        raise FileConflictError([f.path]) from exc


async def _send_resumable(client: AsyncClient, base: str, f: _LocalFile, tracker: _Tracker) -> int:
    """A resumable upload; returns the offset the last resume continued from (0: none)."""
    upload_id = await client._send(
        APIRequest(
            "POST",
            f"{base}/uploads",
            lambda r: str(r.json()["id"]),
            idempotent=False,
            json={"path": f.path},
        )
    )
    target = f"{UPLOADS_PATH}/{path_segment(upload_id)}"
    offset = resumed = 0
    for attempt in range(MAX_RESUMES + 1):
        if offset >= f.size_bytes:
            break
        try:
            offset = await client._send(
                APIRequest(
                    "PATCH",
                    target,
                    lambda r: int(r.headers["upload-offset"]),
                    idempotent=False,  # resumed below, from the server's own offset
                    content=_FileBody(f, offset, tracker),
                    headers={
                        "Upload-Offset": str(offset),
                        "Content-Length": str(f.size_bytes - offset),
                    },
                )
            )
        except (APIConnectionError, APIStatusError) as exc:
            # A drop or a server error: ask where the server is and go on from there. A 409 is
            # another offset than ours (an earlier attempt got further than we knew).
            if attempt == MAX_RESUMES or not _resumable(exc):
                raise
            await anyio.sleep(client.retry_policy.backoff(attempt))
            offset = resumed = await client._send(
                APIRequest(
                    "HEAD", target, lambda r: int(r.headers["upload-offset"]), idempotent=True
                )
            )
            tracker.position(f.path, offset)
    else:
        raise CkptError(f"{f.path}: the upload did not finish after {MAX_RESUMES} resumes")
    await _complete(client, f"{target}/complete", f)
    return resumed


def _resumable(exc: APIError) -> bool:
    if isinstance(exc, APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return True


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
                _json,
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
    """Whether ``target`` holds the file already (same size, same sha256)."""
    try:
        if not target.is_file() or target.stat().st_size != info.size_bytes:
            return False
    except OSError:
        return False
    return _sha256_of(target).hexdigest() == info.sha256


async def download_files(
    client: AsyncClient,
    model_id: str,
    checkpoint_id: str,
    dest: Path,
    result: DownloadResult,
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: ProgressCallback | None = None,
) -> DownloadResult:
    """Download the checkpoint's files under ``dest``, filling ``result``."""
    if parallel < 1:
        raise ValueError("parallel must be >= 1")
    files = await list_files(client, model_id, checkpoint_id)
    fetch: list[FileInfo] = []
    limiter = anyio.CapacityLimiter(parallel)
    for info in files:
        target = _target(dest, info.path)
        if await anyio.to_thread.run_sync(_on_disk, target, info, limiter=limiter):
            result.skipped.append(info.path)
            result.bytes_skipped += info.size_bytes
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
                _json,
                idempotent=True,
                json={"operation": "download", "files": [{"path": i.path} for i in batch]},
            )
        )
        for action in answer["files"]:
            if action["action"] == "download":
                hrefs[action["path"]] = action["href"]
    tracker = _Tracker("download", progress, {info.path: info.size_bytes for info in fetch})

    async def one(info: FileInfo) -> None:
        href = hrefs.get(info.path)
        if href is None:
            raise CkptError(f"{info.path} was deleted from the checkpoint during the download")
        await _fetch_file(client, href, info, _target(dest, info.path), tracker)
        tracker.finished(info.path)
        result.downloaded.append(info.path)
        result.bytes_downloaded += info.size_bytes

    await _all((one(info) for info in fetch), parallel)
    result.downloaded.sort()
    return result


async def _receive_into(
    response: httpx.Response,
    partial: Path,
    digest: hashlib._Hash,
    have: int,
    path: str,
    tracker: _Tracker,
) -> tuple[int, httpx.TransportError | None]:
    """Append the body to ``partial`` (which holds ``have`` bytes, hashed into ``digest``); returns
    the bytes it holds after, and the error that cut the body short, if one did. Receiving and writing overlap: a writer task hashes and writes batches
    on a thread while the next ones arrive. Awaiting each write instead left the connection idle
    during every thread hop, which on a loaded 2-core machine cost ~3 of 4 s for 256 MiB. What
    arrived before a drop is written before the drop is raised, so the next attempt continues."""
    send, receive = anyio.create_memory_object_stream[list[bytes]](WRITE_QUEUE)
    written = have

    async def writer() -> None:
        nonlocal written
        async with receive:
            async for batch in receive:
                await anyio.to_thread.run_sync(_write_all, partial, batch, True, digest)
                written += sum(map(len, batch))
                tracker.position(path, written)

    failure: httpx.TransportError | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        async with send:
            pending: list[bytes] = []
            pending_bytes = 0
            try:
                async for piece in response.aiter_bytes():
                    pending.append(piece)
                    pending_bytes += len(piece)
                    if pending_bytes >= PIECE_BYTES:
                        await send.send(pending)
                        pending, pending_bytes = [], 0
            except httpx.TransportError as exc:
                failure = exc
            if pending:
                await send.send(pending)
    return written, failure


def _write_all(
    path: Path, pieces: list[bytes], append: bool, digest: hashlib._Hash | None = None
) -> None:
    """Append (or write) ``pieces``, hashing them into ``digest`` on the way: on a thread, so the
    event loop keeps receiving the other files meanwhile (hashlib lets go of the GIL)."""
    with open(path, "ab" if append else "wb") as out:
        for piece in pieces:
            if digest is not None:
                digest.update(piece)
            out.write(piece)


async def _fetch_file(
    client: AsyncClient, href: str, info: FileInfo, target: Path, tracker: _Tracker
) -> None:
    """``href`` into ``target``, through ``<target>.partial``; renamed into place once its sha256
    matches. A drop continues from the bytes already written (``Range``)."""
    await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    digest = hashlib.sha256()
    have = 0
    if await anyio.Path(partial).is_file():
        have = (await anyio.Path(partial).stat()).st_size
        if have > info.size_bytes:
            have = 0
        else:
            # What an interrupted run left: hashed again, then continued with a Range request.
            digest = await anyio.to_thread.run_sync(_sha256_of, partial, have)
    if have == 0:
        await anyio.to_thread.run_sync(_write_all, partial, [], False)
    tracker.position(info.path, have)
    presigned = "://" in href
    for attempt in range(MAX_RESUMES + 1):
        if have >= info.size_bytes:
            break
        try:
            response = await client._send(
                APIRequest(
                    "GET",
                    href,
                    lambda r: r,
                    idempotent=True,
                    headers={"Range": f"bytes={have}-"} if have else {},
                    stream=True,
                    authenticated=not presigned,
                )
            )
            try:
                if have and response.status_code != 206:
                    have, digest = 0, hashlib.sha256()  # the whole file came again
                    await anyio.to_thread.run_sync(_write_all, partial, [], False)
                have, cut = await _receive_into(response, partial, digest, have, info.path, tracker)
            finally:
                await response.aclose()
            if cut is not None:
                raise cut
        except httpx.TransportError as exc:  # the body was cut short: the caller sees our error
            if attempt == MAX_RESUMES:
                raise APIConnectionError(
                    request=exc.request, message=f"{info.path}: the download was cut short ({exc})"
                ) from exc
            await anyio.sleep(client.retry_policy.backoff(attempt))
        except APIConnectionError:
            if attempt == MAX_RESUMES:
                raise
            await anyio.sleep(client.retry_policy.backoff(attempt))
    actual = digest.hexdigest()
    if have != info.size_bytes or actual != info.sha256:
        await anyio.Path(partial).unlink(missing_ok=True)
        raise FileIntegrityError(info.path, info.sha256, actual)
    await anyio.to_thread.run_sync(os.replace, partial, target)


# Choosing and saving checkpoints ------------------------------------------------------------------


async def choose_checkpoint(
    client: AsyncClient,
    model_id: str,
    *,
    step: int | None,
    checkpoint_id: str | None,
    latest: bool,
    best: tuple[str, SortMode] | None,
) -> CheckpointDetail:
    """The checkpoint named by exactly one of ``step``, ``checkpoint_id``, ``latest=True`` or
    ``best=(metric, mode)``; :class:`NotFoundError` when there is none."""
    given = sum((step is not None, checkpoint_id is not None, latest, best is not None))
    if given != 1:
        raise ValueError(
            "Name the checkpoint by one of step=, checkpoint_id=, latest=True or best="
        )
    checkpoints = client.checkpoints
    if step is not None:
        return await checkpoints.at_step(model_id, step)
    if checkpoint_id is not None:
        return await checkpoints.get(model_id, checkpoint_id)
    if best is not None:
        metric, mode = best
        if mode not in ("max", "min"):
            raise ValueError('best=(metric, mode): mode is "max" or "min"')
        return await checkpoints.best(model_id, metric=metric, mode=mode)
    newest = await checkpoints.latest(model_id)
    if newest is None:
        raise CkptError(f"model {model_id} has no checkpoints")
    return await checkpoints.get(model_id, newest.id)


def merge_plan(
    registered: Mapping[str, float], metrics: Mapping[str, float]
) -> tuple[tuple[str, float, float] | None, dict[str, float]]:
    """The rule of "register or merge", apart from any request: the first metric ``metrics``
    gives another value than ``registered`` has, as ``(name, registered value, new value)``, or
    None; and the metrics ``registered`` lacks, which a merge adds. Equal values are fine."""
    for name, value in metrics.items():
        if name in registered and registered[name] != value:
            return (name, registered[name], value), {}
    return None, {name: value for name, value in metrics.items() if name not in registered}


async def register_or_merge(
    client: AsyncClient, model_id: str, step: int, metrics: Mapping[str, float]
) -> tuple[CheckpointDetail, Literal["registered", "present", "merged"]]:
    """Register ``step`` with ``metrics``; when it is registered already, add the metrics it
    lacks. Equal values are fine; another value for a metric it holds raises :class:`CkptError`
    naming the metric and both values, and changes nothing."""
    checkpoints = client.checkpoints
    try:
        registered = await checkpoints.register(model_id, step=step, metrics=metrics)
    except ConflictError:
        existing = await checkpoints.at_step(model_id, step)
    else:
        return registered, "registered" if registered.created else "present"
    conflict, missing = merge_plan(existing.metrics, metrics)
    if conflict is not None:
        name, registered_value, value = conflict
        raise CkptError(
            f"step {step} is registered with {name}={registered_value!r}, not {value!r}"
        )
    if not missing:
        return existing, "present"
    return await checkpoints.update_metrics(model_id, existing.id, missing), "merged"


# For `Client`: the async code on an event loop of its own -----------------------------------------


def run_sync(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call()`` on a fresh event loop in a worker thread, so a caller with a running loop of
    its own (a notebook, say) is not disturbed."""

    async def main() -> T:
        return await call()

    with ThreadPoolExecutor(1, thread_name_prefix="ckpt-transfer") as pool:
        return pool.submit(anyio.run, main).result()
