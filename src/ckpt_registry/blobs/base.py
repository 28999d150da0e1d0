"""The BlobStore and Upload interfaces both stores implement, their records, and the checks they share."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import quote

# Every write is collected up to this size (local store) before it is hashed and written on a thread.
CHUNK_BYTES = 1024 * 1024
# Every read yields chunks of at most this size: a download sends 4 MiB pieces, which moved a 1 GiB
# file ~35% faster than 1 MiB ones here (docs/performance.md, "Transfers").
READ_CHUNK_BYTES = 4 * CHUNK_BYTES

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
# A single-request upload (see BlobStore.begin_upload) is named `put-<unix ms it began>-<32 hex>`:
# unlike a resumable one its staged bytes are removed as soon as no request writes them, and its
# name carries its start because S3 says nothing reliable about it (moto dates every multipart
# upload 2010). The old names (32 hex) are all taken for resumable: kept for the upload TTL.
_SINGLE_REQUEST_ID = re.compile(r"put-([0-9]{1,16})-[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A blob that exists: its content's sha256 (lowercase hex) and size in bytes."""

    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """One blob as a GC sweep sees it; `modified` is when it was last written (UTC)."""

    sha256: str
    size: int
    modified: datetime


@dataclass(frozen=True, slots=True)
class StagedUpload:
    """An upload that was begun and neither finished nor aborted; `touched` is its last write (UTC).
    `resumable` is False for a single request's upload (its id is `put-...`)."""

    upload_id: str
    touched: datetime
    resumable: bool = True


@dataclass(frozen=True, slots=True)
class PresignedPut:
    """A direct upload: PUT the bytes to `url` with `headers`, then call
    `BlobStore.complete_presigned_put(upload_id, sha256)` to verify them and make the blob visible."""

    upload_id: str
    url: str
    headers: dict[str, str]


# Called with the blob an upload will become, before it becomes visible (see Upload.finish).
OnDigest = Callable[[BlobInfo], Awaitable[None]]


class Upload(Protocol):
    """Bytes being staged for one blob. One writer at a time; `offset` counts every byte written.

    Dropping a resumable Upload without `finish` or `abort` keeps what is staged for `resume_upload`;
    `close` says so explicitly and makes the staged bytes durable. A single request's dropped Upload
    is left for `BlobStore.remove_dropped_uploads`."""

    @property
    def id(self) -> str: ...

    @property
    def offset(self) -> int: ...

    async def write(self, chunk: bytes) -> None: ...

    async def finish(
        self, expected_sha256: str | None = None, on_digest: OnDigest | None = None
    ) -> BlobInfo:
        """Verify the digest (DigestMismatch removes the staged bytes) and make the blob visible under
        its sha256 in one atomic step; if the blob exists already the staged bytes are dropped.

        `on_digest(blob)` runs once the digest is known and checked, before the blob is looked for
        or made visible: the registry marks the blob as about to be referenced there, so its
        collector cannot remove an existing blob this upload is about to rely on."""
        ...

    async def abort(self) -> None: ...

    async def close(self) -> None:
        """Stop writing but keep every byte written for `resume_upload` (S3 stages what is past the
        last whole part as an object of its own), and, in this process, the hash of them so far, so
        the next `resume_upload` here need not hash them again (hashstates.py)."""
        ...


class BlobStore(Protocol):
    """Content-addressed blobs: each is stored once under the sha256 of its bytes."""

    # Bytes of staged uploads read back and hashed again because no hash was kept for them (a
    # resume in another process or after a restart; see hashstates.py). Only ever grows.
    rehashed_bytes: int

    @property
    def url(self) -> str:
        """Where the blobs are, for logs and messages (never holds credentials)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise BlobStoreUnavailable(reason) unless a blob could be written now."""
        ...

    async def stat(self, sha256: str) -> int | None:
        """The blob's size, or None when there is no such blob."""
        ...

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) in chunks of at most READ_CHUNK_BYTES. BlobNotFound is raised by the first
        iteration, before any byte; once the first chunk came, a concurrent delete does not cut the
        stream short. A range outside the blob raises ValueError."""
        ...

    async def delete(self, sha256: str) -> None:
        """Remove the blob; nothing happens when there is none."""
        ...

    def list_blobs(self) -> AsyncIterator[StoredBlob]: ...

    async def begin_upload(self, *, resumable: bool = False) -> Upload:
        """A new upload. Unless `resumable`, it belongs to the one request that writes it: once that
        request is gone (a dropped client, a killed server) `remove_dropped_uploads` takes its staged
        bytes, and `resume_upload` does not know its id. A resumable one is kept for `resume_upload`
        until `expire_uploads` removes it."""
        ...

    async def resume_upload(self, upload_id: str) -> Upload:
        """The staged upload, ready to take bytes from its `offset`; UploadNotFound if there is none.
        Reading `offset` or aborting hashes nothing; staged bytes whose hash was not kept are hashed
        when a write or `finish` needs it."""
        ...

    def list_uploads(self) -> AsyncIterator[StagedUpload]: ...

    async def expire_uploads(self, older_than: timedelta) -> int:
        """Remove staged uploads (of either kind) not written to for `older_than`; return how many
        were removed."""
        ...

    async def remove_dropped_uploads(self, idle: timedelta) -> int:
        """Remove the staged bytes of single-request uploads that no request writes any more; return
        how many. The local store knows (the writer's lock); S3 has no lock, so there it is those
        not written to for `idle`."""
        ...

    async def presign_get(
        self, sha256: str, expires_in: timedelta, filename: str | None = None
    ) -> str | None:
        """A URL that downloads the blob without credentials (as `filename`), or None (local store)."""
        ...

    async def presign_put(
        self, sha256: str, size: int, expires_in: timedelta
    ) -> PresignedPut | None:
        """A direct upload of `size` bytes declared to hash to `sha256`, or None (local store)."""
        ...

    async def complete_presigned_put(
        self, upload_id: str, expected_sha256: str, on_digest: OnDigest | None = None
    ) -> BlobInfo:
        """Verify a presigned upload by hashing what arrived, then make it visible (DigestMismatch
        deletes it; UploadNotFound if nothing was uploaded)."""
        ...


def check_sha256(sha256: str) -> str:
    """`sha256` if it is 64 lowercase hex digits; ValueError otherwise (it becomes part of a path)."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
    return sha256


def new_upload_id() -> str:
    """A resumable upload's id (also a presigned PUT's)."""
    return uuid.uuid4().hex


def new_single_request_id() -> str:
    """A single-request upload's id: `put-<unix ms now>-<32 hex>`."""
    return f"put-{time.time_ns() // 1_000_000}-{uuid.uuid4().hex}"


def is_upload_id(upload_id: str) -> bool:
    """A resumable upload's id (and what older versions named every upload)."""
    return _UPLOAD_ID.fullmatch(upload_id) is not None


def staged_upload(name: str, touched: datetime) -> StagedUpload | None:
    """The upload whose staged bytes are named `name` and were last written at `touched`; None when
    the name is no upload's. A single request's upload was touched no earlier than it began (its
    name says when), whatever the store reports."""
    if is_upload_id(name):
        return StagedUpload(name, touched)
    match = _SINGLE_REQUEST_ID.fullmatch(name)
    if match is None:
        return None
    began = datetime.fromtimestamp(int(match[1]) / 1000, UTC)
    return StagedUpload(name, max(touched, began), resumable=False)


def check_range(start: int, end: int | None, size: int) -> int:
    """The end of [start, end) within a blob of `size` bytes; ValueError if it does not fit."""
    stop = size if end is None else end
    if not 0 <= start <= stop <= size:
        raise ValueError(f"range [{start}, {end}) is outside a blob of {size} bytes")
    return stop


def content_disposition(filename: str) -> str:
    """An attachment header naming `filename`, readable by old clients and exact for UTF-8 (RFC 6266)."""
    plain = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"
