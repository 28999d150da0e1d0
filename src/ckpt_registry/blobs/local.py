"""The local blob store: a folder of files named by their sha256, uploads staged beside them.

    <root>/sha256/ab/abcdef...   one read-only file per blob (ab = its first two hex digits)
    <root>/uploads/<id>          staged bytes of an upload, locked (flock) while a request writes it
                                 (<id>: 32 hex for a resumable upload, put-<ms>-<hex> for one request's)

A blob appears by rename(2) of a staged file that was fsynced, so a reader sees all of it or nothing.
Staged files are only ever appended to, under their lock.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from .base import (
    CHUNK_BYTES,
    READ_CHUNK_BYTES,
    BlobInfo,
    OnDigest,
    PresignedPut,
    StagedUpload,
    StoredBlob,
    check_range,
    check_sha256,
    is_upload_id,
    new_single_request_id,
    new_upload_id,
    staged_upload,
)
from .errors import BlobNotFound, BlobStoreUnavailable, DigestMismatch, UploadInUse, UploadNotFound
from .hashstates import HashStates

T = TypeVar("T")

# Blob I/O runs on the store's own threads, so a burst of uploads cannot take the default executor
# that other parts of the server use.
IO_THREADS = 8
# One writev(2) per batch takes at most IOV_MAX (1,024 on Linux) pieces; a body trickled in tiny
# chunks is written in batches of this many.
MAX_BATCH_CHUNKS = 512
# How long a resume waits for the lock of a writer that is going away (see _open_staged).
LOCK_GRACE_SECONDS = 0.25
# An empty single-request file younger than this is left alone: its creator locks it just after
# creating it, and the collector must not slip in between. Once a byte is in it, it was locked.
NEW_FILE_SECONDS = 5.0


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "sha256"
        self.uploads_dir = root / "uploads"
        # Whether writes and reads run on threads; False only to measure what the threads buy
        # (benchmarks/blob_local.py).
        self.offload = True
        self._executor: ThreadPoolExecutor | None = None
        self.hash_states = HashStates()
        self.rehashed_bytes = 0
        self._rehashed_lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def submit(self, function: Callable[[], T]) -> Future[T]:
        """`function()` on a blob thread, not waited for (inline when not offloading)."""
        if not self.offload:
            done: Future[T] = Future()
            try:
                done.set_result(function())
            except BaseException as exc:
                done.set_exception(exc)
            return done
        if self._executor is None:
            raise RuntimeError("the blob store is not open")
        return self._executor.submit(function)

    async def run(self, function: Callable[[], T], doing: str) -> T:
        """`function()` on a blob thread; an OSError becomes BlobStoreUnavailable naming `doing`."""
        try:
            if not self.offload:
                return function()
            if self._executor is None:
                raise RuntimeError("the blob store is not open")
            return await asyncio.get_running_loop().run_in_executor(self._executor, function)
        except OSError as exc:
            raise unavailable(exc, doing, self.root) from exc

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="blobs")
        await self.run(self._make_dirs, "creating the blob folders")

    def _make_dirs(self) -> None:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def check(self) -> None:
        await self.run(self._write_probe, "writing a probe file")

    def _write_probe(self) -> None:
        self._make_dirs()
        probe = self.uploads_dir / f".probe-{new_upload_id()}"
        try:
            # One byte takes a whole block, so a full disk fails here as an upload would.
            with open(probe, "wb") as file:
                file.write(b"\0")
                file.flush()
                os.fsync(file.fileno())
        finally:
            probe.unlink(missing_ok=True)

    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / sha256[:2] / sha256

    async def stat(self, sha256: str) -> int | None:
        # On the event loop: a stat of a local file costs microseconds, less than a thread hop.
        try:
            return self.blob_path(check_sha256(sha256)).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise unavailable(exc, "reading a blob's size", self.root) from exc

    async def read(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.blob_path(check_sha256(sha256))

        def open_blob() -> int:
            try:
                return os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise BlobNotFound(sha256) from None

        fd = await self.run(open_blob, "opening a blob")
        ahead: Future[bytes] | None = None
        try:
            # An open file stays readable after a delete (unlink), so the stream is never cut short.
            stop = check_range(start, end, os.fstat(fd).st_size)
            position = start
            if position < stop:
                ahead = self.submit(
                    partial(os.pread, fd, min(READ_CHUNK_BYTES, stop - position), position)
                )
            while ahead is not None:
                try:
                    chunk = await asyncio.wrap_future(ahead)
                except OSError as exc:
                    raise unavailable(exc, "reading a blob", self.root) from exc
                if not chunk:
                    raise BlobStoreUnavailable(f"blob {sha256} is shorter than its size on disk")
                position += len(chunk)
                # Read one chunk ahead: the disk read of the next chunk runs while this one is sent.
                ahead = None
                if position < stop:
                    count = min(READ_CHUNK_BYTES, stop - position)
                    ahead = self.submit(partial(os.pread, fd, count, position))
                yield chunk
        finally:
            if ahead is None:
                os.close(fd)
            else:
                # A read may still be running on the descriptor (the reader left mid-stream): close it
                # once that read is over, never under it.
                ahead.add_done_callback(partial(_close_after_read, fd))

    async def delete(self, sha256: str) -> None:
        path = self.blob_path(check_sha256(sha256))
        await self.run(lambda: path.unlink(missing_ok=True), "deleting a blob")

    async def list_blobs(self) -> AsyncIterator[StoredBlob]:
        prefixes = await self.run(lambda: sorted(_names(self.blobs_dir)), "listing blobs")
        for prefix in prefixes:
            folder = self.blobs_dir / prefix
            for blob in await self.run(partial(_blobs_in, folder), "listing blobs"):
                yield blob

    async def begin_upload(self, *, resumable: bool = False) -> LocalUpload:
        upload_id = new_upload_id() if resumable else new_single_request_id()
        path = self.uploads_dir / upload_id

        def create() -> int:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never held by another
            return fd

        fd = await self.run(create, "creating a staged upload")
        return LocalUpload(self, upload_id, fd, hashlib.sha256(), 0)

    async def resume_upload(self, upload_id: str) -> LocalUpload:
        if not is_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        path = self.uploads_dir / upload_id

        def reopen() -> tuple[int, hashlib._Hash | None, int]:
            fd = _open_staged(path, upload_id)
            try:
                status = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            # The hash this process kept when the last request left the file, if the file is still
            # exactly that; else None, and the staged bytes are hashed again once a write or
            # `finish` needs it (a HEAD, an abort or a refused offset never does).
            return fd, self.hash_states.take(upload_id, _described(status)), status.st_size

        fd, hasher, offset = await self.run(reopen, "reopening a staged upload")
        return LocalUpload(self, upload_id, fd, hasher, offset)

    def rehash(self, fd: int, size: int) -> hashlib._Hash:
        """The hash of the first `size` staged bytes, read back (on a blob thread: 2 GiB takes about
        1.5 s at the 1.4 GB/s SHA-256 runs at here)."""
        hasher = hashlib.sha256()
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(CHUNK_BYTES, size - offset), offset)
            if not chunk:
                raise BlobStoreUnavailable(f"a staged upload in {self.root} is shorter than {size}")
            hasher.update(chunk)
            offset += len(chunk)
        with self._rehashed_lock:
            self.rehashed_bytes += size
        return hasher

    async def list_uploads(self) -> AsyncIterator[StagedUpload]:
        for upload in await self.run(self._staged, "listing staged uploads"):
            yield upload

    def _staged(self) -> list[StagedUpload]:
        staged = []
        with os.scandir(self.uploads_dir) as entries:
            for entry in entries:
                try:
                    touched = _utc(entry.stat().st_mtime)
                except FileNotFoundError:  # finished or aborted meanwhile
                    continue
                upload = staged_upload(entry.name, touched)
                if upload is not None:
                    staged.append(upload)
        return staged

    async def expire_uploads(self, older_than: timedelta) -> int:
        def expire() -> int:
            cutoff = datetime.now(UTC) - older_than
            removed = 0
            for upload in self._staged():
                if upload.touched >= cutoff:
                    continue
                path = self.uploads_dir / upload.upload_id
                try:
                    fd = _open_staged(path, upload.upload_id)
                except (UploadNotFound, UploadInUse):  # gone, or a request is writing it
                    continue
                try:
                    path.unlink()
                    removed += 1
                finally:
                    os.close(fd)
                self.hash_states.drop(upload.upload_id)
            return removed

        return await self.run(expire, "removing expired uploads")

    async def remove_dropped_uploads(self, idle: timedelta) -> int:  # noqa: ARG002
        # `idle` is for stores without a lock: here an unlocked file has no writer.
        def remove() -> int:
            new = time.time() - NEW_FILE_SECONDS
            removed = 0
            for upload in self._staged():
                if upload.resumable:
                    continue
                path = self.uploads_dir / upload.upload_id
                try:
                    status = path.stat()
                    if status.st_size == 0 and status.st_mtime > new:
                        continue  # not even tried: its creator is about to take the lock
                    # No wait for the lock: a writer that is going away is seen on the next pass.
                    fd = _open_staged(path, upload.upload_id, grace=0)
                except (FileNotFoundError, UploadNotFound, UploadInUse):
                    continue  # gone, or its request is still writing
                try:
                    path.unlink(missing_ok=True)  # missing: its request aborted it meanwhile
                    removed += 1
                finally:
                    os.close(fd)
            return removed

        return await self.run(remove, "removing the staged bytes of dropped uploads")

    # Bytes from a folder can only go through the server: no direct transfers.
    async def presign_get(
        self,
        sha256: str,  # noqa: ARG002
        expires_in: timedelta,  # noqa: ARG002
        filename: str | None = None,  # noqa: ARG002
    ) -> str | None:
        return None

    async def presign_put(
        self,
        sha256: str,  # noqa: ARG002
        size: int,  # noqa: ARG002
        expires_in: timedelta,  # noqa: ARG002
    ) -> PresignedPut | None:
        return None

    async def complete_presigned_put(
        self,
        upload_id: str,
        expected_sha256: str,  # noqa: ARG002
        on_digest: OnDigest | None = None,  # noqa: ARG002
    ) -> BlobInfo:
        raise UploadNotFound(upload_id)


class LocalUpload:
    """Bytes staged in `<root>/uploads/<id>`. Body chunks are collected up to CHUNK_BYTES, then written
    and hashed on a blob thread while the next ones arrive: one batch in flight at a time, so the
    file and the hash take the batches in order. The file is flocked while this object holds it, so a
    second writer gets UploadInUse. A resumed upload without a kept hash (see HashStates) hashes
    the staged bytes again before its first write, or in `finish`."""

    def __init__(
        self,
        store: LocalBlobStore,
        upload_id: str,
        fd: int,
        hasher: hashlib._Hash | None,
        staged: int,
    ) -> None:
        self._store = store
        self._id = upload_id
        self._path = store.uploads_dir / upload_id
        self._fd: int | None = fd
        self._hasher = hasher  # None: the staged bytes are not hashed yet
        self._staged = staged  # bytes in the file, all of them hashed (unless _hasher is None)
        self._chunks: list[bytes] = []  # received, not yet handed to a thread
        self._buffered = 0
        self._writing: Future[None] | None = None  # the batch on a thread, if any
        self._writing_bytes = 0
        # Dropped without close/finish/abort: the descriptor (and so the lock) goes with the object.
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def id(self) -> str:
        return self._id

    @property
    def offset(self) -> int:
        return self._staged + self._writing_bytes + self._buffered

    def _held_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"upload {self._id} is closed")
        return self._fd

    async def write(self, chunk: bytes) -> None:
        self._held_fd()
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= CHUNK_BYTES or len(self._chunks) >= MAX_BATCH_CHUNKS:
            await self._settle()
            self._start()

    def _start(self) -> None:
        """Hand the collected chunks to a blob thread, without waiting for it."""
        fd = self._held_fd()
        chunks, size = self._chunks, self._buffered
        self._chunks, self._buffered = [], 0
        staged = self._staged

        # The closure holds `self`, so an upload dropped with a batch in flight keeps its
        # descriptor until the write has ended: never a number reused meanwhile.
        def append() -> None:
            hasher = self._hasher
            if hasher is None:
                hasher = self._hasher = self._store.rehash(fd, staged)
            try:
                written = 0
                while written < size:
                    written += os.writev(fd, _unwritten(chunks, written))
            except OSError:
                # Back to the last whole batch, so the file and the hash agree and a resume works.
                os.ftruncate(fd, staged)
                raise
            for chunk in chunks:
                hasher.update(chunk)

        self._writing, self._writing_bytes = self._store.submit(append), size

    async def _settle(self) -> None:
        """Wait for the batch in flight; its error (a full disk, say) is raised here."""
        writing = self._writing
        if writing is None:
            return
        try:
            # Shielded: a cancelled request must not close the descriptor under a running write
            # (_release waits for the thread instead).
            await asyncio.shield(asyncio.wrap_future(writing))
        except OSError as exc:
            self._writing, self._writing_bytes = None, 0
            self._release()
            raise unavailable(exc, "writing a staged upload", self._store.root) from exc
        except BaseException:
            self._release()
            raise
        self._staged += self._writing_bytes
        self._writing, self._writing_bytes = None, 0

    async def _flush(self) -> None:
        await self._settle()
        if self._chunks:
            self._start()
            await self._settle()

    async def finish(
        self, expected_sha256: str | None = None, on_digest: OnDigest | None = None
    ) -> BlobInfo:
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        await self._flush()
        fd = self._held_fd()
        store, path, size = self._store, self._path, self._staged
        if self._hasher is None:
            try:
                self._hasher = await store.run(
                    partial(store.rehash, fd, size), "hashing a staged upload"
                )
            except BaseException:
                self._release()
                raise
        sha256 = self._hasher.hexdigest()
        if expected_sha256 is not None and sha256 != expected_sha256:
            await self.abort()
            raise DigestMismatch(expected_sha256, sha256)
        if on_digest is not None:
            try:
                await on_digest(BlobInfo(sha256, size))
            except BaseException:
                self._release()  # staged bytes kept: the caller aborts or resumes
                raise

        def publish() -> BlobInfo:
            target = store.blob_path(sha256)
            if target.exists():
                path.unlink(missing_ok=True)
                return BlobInfo(sha256, size)
            os.fsync(fd)
            os.fchmod(fd, 0o444)
            target.parent.mkdir(exist_ok=True)
            # Renamed while still locked: a resume that opened the old name sees another inode.
            os.rename(path, target)
            _fsync_dir(target.parent)
            return BlobInfo(sha256, size)

        try:
            return await store.run(publish, "storing a blob")
        finally:
            self._release()

    async def abort(self) -> None:
        self._release()
        path = self._path
        await self._store.run(lambda: path.unlink(missing_ok=True), "removing a staged upload")

    async def close(self) -> None:
        if self._fd is None:
            return
        await self._flush()
        fd = self._held_fd()
        store, upload_id, hasher, staged = self._store, self._id, self._hasher, self._staged

        def save() -> None:
            os.fsync(fd)
            status = os.fstat(fd)
            # Kept while the file is still locked, described as this writer leaves it; only for an
            # upload that can be resumed (a single request's cannot).
            if hasher is not None and status.st_size == staged and is_upload_id(upload_id):
                store.hash_states.keep(upload_id, _described(status), hasher)

        try:
            await store.run(save, "saving a staged upload")
        finally:
            self._release()

    def _release(self) -> None:
        self._chunks, self._buffered = [], 0
        if self._fd is None:
            return
        self._fd = None
        writing = self._writing
        if writing is not None and not writing.done():
            # A thread still writes to the descriptor: it is closed when that write ends.
            writing.add_done_callback(lambda _: self._finalizer())
        else:
            self._finalizer()


def _unwritten(chunks: list[bytes], skip: int) -> list[memoryview | bytes]:
    """The chunks past the first `skip` bytes (after a short writev)."""
    if skip == 0:
        return chunks  # type: ignore[return-value]
    rest: list[memoryview | bytes] = []
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        rest.append(memoryview(chunk)[skip:] if skip else chunk)
        skip = 0
    return rest


def _open_staged(path: Path, upload_id: str, grace: float = LOCK_GRACE_SECONDS) -> int:
    """The staged file, opened and locked; UploadNotFound or UploadInUse if it cannot be had."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        raise UploadNotFound(upload_id) from None
    # A writer that just went away (a dropped connection) may still have one batch on a thread,
    # which holds the lock for a few milliseconds more: wait that long, not for a live writer.
    deadline = time.monotonic() + grace
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.005)
                continue
            os.close(fd)
            raise UploadInUse(upload_id) from None
    try:
        # Finished (renamed into the blobs) between our open and our lock: not an upload any more.
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        raise UploadNotFound(upload_id)
    return fd


def _described(status: os.stat_result) -> tuple[int, ...]:
    """A staged file as the hash kept for it knows it. Writers only append, so the same inode and
    size mean the same bytes; the times catch a change made outside the registry."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _names(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return [entry.name for entry in entries if entry.is_dir()]


def _blobs_in(folder: Path) -> list[StoredBlob]:
    blobs = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if len(entry.name) != 64 or entry.name[:2] != folder.name:
                    continue
                try:
                    status = entry.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                blobs.append(StoredBlob(entry.name, status.st_size, _utc(status.st_mtime)))
    except FileNotFoundError:
        return []
    return blobs


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def unavailable(exc: OSError, doing: str, root: Path) -> BlobStoreUnavailable:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BlobStoreUnavailable(f"the blob folder {root} is full ({doing})", full=True)
    if exc.errno == errno.EROFS:
        return BlobStoreUnavailable(f"the blob folder {root} is read-only ({doing})")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BlobStoreUnavailable(f"no permission to write in the blob folder {root} ({doing})")
    return BlobStoreUnavailable(f"{doing} in {root} failed: {exc.strerror or exc}")


def _close_after_read(fd: int, read: Future[bytes]) -> None:
    """Close a blob's descriptor once its last read ahead is over; nobody wants that read's bytes."""
    if not read.cancelled():
        read.exception()  # retrieved, so an error of a read nobody waits for is not reported as lost
    os.close(fd)
