"""Moving a checkpoint's files: a folder (or one file) up, a checkpoint's files down to a folder.

Written once, on ``AsyncClient``; ``Client`` runs the same code on an event loop of its own
(:func:`run_sync`). The wire surface is shared/CONTRACT.md section 6 and docs/api.md ("Files").

Up: the checkpoint's file list comes first: other content at a path it holds is refused before a
byte is sent, and the same content there is skipped. The other files are hashed, and as they are,
batch requests (``transfers``, up to 1,000 files each) say which the entity holds already and the
server attached without a byte sent (``attached``), and where to send the rest, which start at once
(:class:`_Pipeline`). Files up to ``resumable_above`` bytes go in one ``PUT`` (sent again whole after
a drop); larger ones through a resumable upload, which after a dropped connection asks the server
how many bytes it kept (``HEAD``) and continues from there. When the server presigns (S3), the
bytes go straight to the bucket, then ``complete``.

Down: each file is streamed into ``<name>.partial`` beside its final name, hashed as it arrives, and
renamed into place only when its sha256 matches. A file already on disk with the right size and
sha256 is skipped; a ``.partial`` left by an interrupted run is continued with a ``Range`` request.
Memory stays flat: files move in pieces of at most 1 MiB.

The bytes of each file move on a thread of their own, over ``http.client`` (:mod:`.wire`), with
the same retries and errors as every other request; the rest (hashing, the batch requests) is here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.abc
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
from .wire import CHUNK_BYTES, FileBody, Stop, Wire, in_thread, read_into

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
#: bytes the server kept; smaller ones in one ``PUT``, sent again whole after a drop (at most this
#: much again). A resumable upload costs three requests instead of one, nothing at these sizes: the
#: server keeps the upload's hash between them (blobs/hashstates.py) instead of reading it back.
RESUMABLE_ABOVE = 16 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"
#: How often one file's transfer continues after a dropped connection before giving up.
MAX_RESUMES = 5

#: Called after each piece of a transfer moves (on the transfer's thread: keep it quick).
ProgressCallback = Callable[[TransferProgress], None]


class _Tracker:
    """The running totals a progress callback sees; each file reports where it is, so a retry or
    a resume that starts a file again from an earlier offset never counts a byte twice. Files
    report from their own threads: the totals change, and the callback runs, under a lock."""

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
        self._lock = threading.Lock()

    def position(self, path: str, file_bytes: int) -> None:
        with self._lock:
            self.done += file_bytes - self.at[path]
            self.at[path] = file_bytes
            self._tell(path)

    def skip(self, path: str) -> None:
        """``path`` moves no byte after all (the registry held it): out of the totals."""
        with self._lock:
            self.done -= self.at.pop(path)
            self.total -= self.sizes.pop(path)

    def finished(self, path: str) -> None:
        with self._lock:
            self.done += self.sizes[path] - self.at[path]
            self.at[path] = self.sizes[path]
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


@asynccontextmanager
async def _first_failure() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose first failure stops the rest and is raised as it is (not wrapped in
    an ExceptionGroup), so callers catch FileIntegrityError and the like."""
    try:
        async with anyio.create_task_group() as group:
            yield group
    except BaseExceptionGroup as failed:
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _all(calls: Iterable[Coroutine[Any, Any, None]], parallel: int) -> None:
    """Run the calls, ``parallel`` at a time, as :func:`_first_failure` says."""
    limiter = anyio.Semaphore(parallel)

    async def run(call: Coroutine[Any, Any, None]) -> None:
        async with limiter:
            await call

    async with _first_failure() as group:
        for call in calls:
            group.start_soon(run, call)


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
            piece = file.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
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
    found = _sources(Path(source))
    result = UploadResult(checkpoint_id=checkpoint_id)
    # Paths the checkpoint holds already are settled first, so other content at one of them is
    # refused before any byte is sent. Every other path is new to it: those are hashed and sent
    # as a pipeline (see _Pipeline).
    held = {info.path: info for info in await list_files(client, model_id, checkpoint_id)}
    conflicts = [
        path for path, local in found if path in held and _size(local) != held[path].size_bytes
    ]
    if conflicts:
        raise FileConflictError(conflicts)
    for f in await _hash_all([(path, local) for path, local in found if path in held], parallel):
        if f.sha256 != held[f.path].sha256:
            conflicts.append(f.path)
        result.skipped.append(f.path)
        result.bytes_skipped += f.size_bytes
    if conflicts:
        raise FileConflictError(conflicts)
    new = [(path, local, _size(local)) for path, local in found if path not in held]
    tracker = _Tracker("upload", progress, {path: size for path, _, size in new})
    stop = Stop()
    wire = Wire(client, stop)
    pipeline = _Pipeline(
        client, wire, _checkpoint_path(model_id, checkpoint_id), tracker, result, resumable_above
    )
    try:
        await pipeline.run(new, parallel)
    finally:
        wire.close()
    result.sent.sort()
    result.skipped.sort()
    return result


def _size(local: Path) -> int:
    return local.stat().st_size


#: One thread hop hashes files until this much is hashed (many small files, few hops).
HASH_RUN_BYTES = 8 * 1024 * 1024


def _hash_run(files: list[tuple[str, Path, int]], start: int) -> list[_LocalFile]:
    """Files from ``start`` hashed in order, until ``HASH_RUN_BYTES`` are (at least one file)."""
    hashed: list[_LocalFile] = []
    total = 0
    for path, local, size in files[start:]:
        hashed.append(_LocalFile(path, local, size, _sha256_of(local).hexdigest()))
        total += size
        if total >= HASH_RUN_BYTES:
            break
    return hashed


class _Pipeline:
    """Hash, ask, send, overlapped: files are hashed in order on one thread (at 1.6 GB/s a core
    it keeps ahead of the network, and leaves the other core to a server on the same machine),
    and whenever some are hashed, one batch request asks the server about all of them (up to 1,000; the next batch
    gathers what was hashed meanwhile); each file it does not hold goes up on a thread of its
    own, ``parallel`` at a time. Hashing a folder first and sending it after took a fifth of the
    time of a 1 GiB upload on this project's 2-core benchmark machine."""

    def __init__(
        self,
        client: AsyncClient,
        wire: Wire,
        base: str,
        tracker: _Tracker,
        result: UploadResult,
        resumable_above: int,
    ) -> None:
        self._client = client
        self._wire = wire
        self._base = base
        self._tracker = tracker
        self._result = result
        self._resumable_above = resumable_above

    async def run(self, files: list[tuple[str, Path, int]], parallel: int) -> None:
        hashed_in, hashed_out = anyio.create_memory_object_stream[_LocalFile](max(len(files), 1))
        senders = anyio.Semaphore(parallel)

        async def hash_all() -> None:
            async with hashed_in:
                at = 0
                while at < len(files):
                    for f in await anyio.to_thread.run_sync(_hash_run, files, at):
                        await hashed_in.send(f)
                        at += 1

        async def send_one(f: _LocalFile, action: dict[str, Any]) -> None:
            async with senders:
                resumed = await in_thread(partial(self._send, f, action), self._wire.stop)
            if resumed:
                self._result.resumed[f.path] = resumed
            self._tracker.finished(f.path)
            self._result.sent.append(f.path)
            self._result.bytes_sent += f.size_bytes

        async def dispatch(group: anyio.abc.TaskGroup) -> None:
            async with hashed_out:
                async for first in hashed_out:
                    batch = [first]
                    while len(batch) < FILES_LIMIT_MAX:
                        try:
                            batch.append(hashed_out.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    for f, action in await self._ask(batch):
                        if action["action"] == "conflict":  # another writer got there first
                            raise FileConflictError([f.path])
                        if action["action"] in ("exists", "attached"):
                            self._tracker.skip(f.path)
                            self._result.skipped.append(f.path)
                            self._result.bytes_skipped += f.size_bytes
                        else:
                            group.start_soon(send_one, f, action)

        async with _first_failure() as group:
            group.start_soon(hash_all)
            group.start_soon(dispatch, group)

    async def _ask(self, batch: list[_LocalFile]) -> list[tuple[_LocalFile, dict[str, Any]]]:
        # Retried like any idempotent request: with presigning on, a lost answer leaves the direct
        # uploads it began on the server for the collector, nothing else.
        answer = await self._client._send(
            APIRequest(
                "POST",
                f"{self._base}/transfers",
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
        return list(zip(batch, answer["files"], strict=True))

    def _send(self, f: _LocalFile, action: dict[str, Any]) -> int:
        """On the file's thread; the offset a resume continued from (0: none)."""
        if action.get("upload_id"):
            _send_presigned(self._wire, f, action, self._tracker)
        elif f.size_bytes <= self._resumable_above:
            _send_whole(self._wire, f, action, self._tracker)
        else:
            return _send_resumable(self._wire, self._client, self._base, f, self._tracker)
        return 0


def _content_digest(sha256: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"


def _body(f: _LocalFile, start: int, tracker: _Tracker) -> FileBody:
    tracker.position(f.path, start)
    return FileBody(
        f.source, start, f.size_bytes - start, lambda offset: tracker.position(f.path, offset)
    )


def _send_whole(wire: Wire, f: _LocalFile, action: dict[str, Any], tracker: _Tracker) -> None:
    """One PUT to the files route; the server checks the declared digest (a file that changed
    since it was hashed is refused, 422, and nothing is stored)."""
    try:
        wire.send(
            APIRequest(
                action["method"],
                action["href"],
                _ignore,
                idempotent=True,  # the same bytes at the same path again: 200
                headers={
                    **action.get("headers", {}),
                    "Content-Length": str(f.size_bytes),
                    "Content-Digest": _content_digest(f.sha256),
                },
            ),
            _body(f, 0, tracker),
        )
    except ConflictError as exc:
        raise FileConflictError([f.path]) from exc


def _send_presigned(wire: Wire, f: _LocalFile, action: dict[str, Any], tracker: _Tracker) -> None:
    """Straight to the blob store (one PUT, sent again from byte 0 after a drop: a presigned PUT
    cannot be continued), then ``complete``, where the server checks the digest."""
    wire.send(
        APIRequest(
            action["method"],
            action["href"],
            _ignore,
            idempotent=True,  # the same bytes to the same staging key
            headers={**action.get("headers", {}), "Content-Length": str(f.size_bytes)},
            authenticated=False,
        ),
        _body(f, 0, tracker),
    )
    _complete(wire, action["complete"], f)


def _complete(wire: Wire, href: str, f: _LocalFile) -> None:
    try:
        wire.send(APIRequest("POST", href, _ignore, idempotent=True, json={"sha256": f.sha256}))
    except ConflictError as exc:
        raise FileConflictError([f.path]) from exc


def _send_resumable(
    wire: Wire, client: AsyncClient, base: str, f: _LocalFile, tracker: _Tracker
) -> int:
    """A resumable upload; returns the offset the last resume continued from (0: none)."""
    upload_id = wire.send(
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
            offset = wire.send(
                APIRequest(
                    "PATCH",
                    target,
                    lambda r: int(r.headers["upload-offset"]),
                    idempotent=False,  # resumed below, from the server's own offset
                    headers={
                        "Upload-Offset": str(offset),
                        "Content-Length": str(f.size_bytes - offset),
                    },
                ),
                _body(f, offset, tracker),
            )
        except (APIConnectionError, APIStatusError) as exc:
            # A drop or a server error: ask where the server is and go on from there. A 409 is
            # another offset than ours (an earlier attempt got further than we knew).
            if attempt == MAX_RESUMES or not _resumable(exc):
                raise
            wire.stop.wait(client.retry_policy.backoff(attempt))
            offset = resumed = wire.send(
                APIRequest(
                    "HEAD", target, lambda r: int(r.headers["upload-offset"]), idempotent=True
                )
            )
            tracker.position(f.path, offset)
    else:
        raise CkptError(f"{f.path}: the upload did not finish after {MAX_RESUMES} resumes")
    _complete(wire, f"{target}/complete", f)
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
    stop = Stop()
    wire = Wire(client, stop)

    async def one(info: FileInfo) -> None:
        href = hrefs.get(info.path)
        if href is None:
            raise CkptError(f"{info.path} was deleted from the checkpoint during the download")
        target = _target(dest, info.path)
        await in_thread(partial(_fetch_file, wire, client, href, info, target, tracker), stop)
        tracker.finished(info.path)
        result.downloaded.append(info.path)
        result.bytes_downloaded += info.size_bytes

    try:
        await _all((one(info) for info in fetch), parallel)
    finally:
        wire.close()
    result.downloaded.sort()
    return result


def _fetch_file(
    wire: Wire, client: AsyncClient, href: str, info: FileInfo, target: Path, tracker: _Tracker
) -> None:
    """On the file's thread: ``href`` into ``target``, through ``<target>.partial``, renamed into
    place once its sha256 matches. Each 1 MiB is received, hashed and written in turn. A drop
    continues from the bytes already written (``Range``), as does a ``.partial`` an interrupted
    run left (hashed again first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    have = 0
    with open(partial, "ab", buffering=0) as out:
        have = os.fstat(out.fileno()).st_size
        digest = _sha256_of(partial, have) if 0 < have <= info.size_bytes else hashlib.sha256()
        if have > info.size_bytes:
            out.truncate(0)
            have = 0
        tracker.position(info.path, have)
        presigned = "://" in href
        buffer = memoryview(bytearray(CHUNK_BYTES))
        for attempt in range(MAX_RESUMES + 1):
            if have >= info.size_bytes:
                break
            try:
                response = wire.send(
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
                        out.truncate(0)  # the whole file came again
                        have, digest = 0, hashlib.sha256()
                    while got := read_into(response, buffer):
                        piece = buffer[:got]
                        digest.update(piece)
                        _write_all(out.fileno(), piece)
                        have += got
                        tracker.position(info.path, have)
                finally:
                    response.close()
            except httpx.TransportError as exc:  # the body was cut short: the caller sees our error
                if attempt == MAX_RESUMES:
                    raise APIConnectionError(
                        request=exc.request,
                        message=f"{info.path}: the download was cut short ({exc})",
                    ) from exc
                wire.stop.wait(client.retry_policy.backoff(attempt))
            except APIConnectionError:
                if attempt == MAX_RESUMES:
                    raise
                wire.stop.wait(client.retry_policy.backoff(attempt))
    actual = digest.hexdigest()
    if have != info.size_bytes or actual != info.sha256:
        partial.unlink(missing_ok=True)
        raise FileIntegrityError(info.path, info.sha256, actual)
    os.replace(partial, target)


def _write_all(fd: int, piece: memoryview) -> None:
    while piece:
        piece = piece[os.write(fd, piece) :]


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
