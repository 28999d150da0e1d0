"""The S3 blob store (AWS S3, MinIO, R2, GCS interop) through aiobotocore.

    <prefix>sha256/<hex>         one object per blob
    <prefix>uploads/<id>         a multipart upload being staged, or a presigned PUT waiting to be checked
                                 (<id>: 32 hex, resumable; put-<ms>-<hex>, a single request's)
    <prefix>uploads/<id>.tail    the bytes a closed upload holds past its last whole part

A blob appears by one completed write to its key (a PUT, or a server-side copy of a staged object) made
after its digest was checked, so nobody ever reads a partial or unchecked blob.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ..storage.urls import redacted
from .base import (
    CHUNK_BYTES,
    BlobInfo,
    OnDigest,
    PresignedPut,
    StagedUpload,
    StoredBlob,
    check_range,
    check_sha256,
    content_disposition,
    is_upload_id,
    new_single_request_id,
    new_upload_id,
    staged_upload,
)
from .errors import BlobNotFound, BlobStoreUnavailable, DigestMismatch, UploadNotFound
from .hashstates import HashStates

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")

MIB = 1024 * 1024
# Parts are buffered whole before they are sent, so this is the memory one upload holds. S3 wants
# at least 5 MiB per part and at most 10,000 parts; part sizes grow by PART_BYTES every 1,000 parts,
# which reaches 430 GiB before the limit.
PART_BYTES = 8 * MIB
MIN_PART_BYTES = 5 * MIB
MAX_PARTS = 10_000
# The largest object one CopyObject copies; larger ones are copied in parts of COPY_PART_BYTES.
COPY_LIMIT = 5 * 1024 * MIB
COPY_PART_BYTES = 1024 * MIB
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
# A tail object's metadata: how many parts it follows. A tail is current only while the upload has
# exactly that many whole parts; once a part took its bytes (a crash before the tail was rewritten)
# it is stale and ignored.
_AFTER_PARTS = "after-parts"
_TAIL = ".tail"


def endpoint_from_environment() -> str | None:
    """The endpoint the AWS tools would use: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url or endpoint_from_environment()
        self.part_bytes = PART_BYTES
        self.copy_limit = COPY_LIMIT
        self.copy_part_bytes = COPY_PART_BYTES
        self.max_attempts = 3  # per request, with botocore's backoff between them
        self._stack: AsyncExitStack | None = None
        self._s3: S3Client | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.hash_states = HashStates()
        self.rehashed_bytes = 0

    @property
    def url(self) -> str:
        where = f" at {redacted(self.endpoint_url)}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def blob_key(self, sha256: str) -> str:
        return f"{self.prefix}sha256/{sha256}"

    def upload_key(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id}"

    def tail_key(self, upload_id: str) -> str:
        return self.upload_key(upload_id) + _TAIL

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            raise RuntimeError("the blob store is not open")
        return self._s3

    async def open(self) -> None:
        if self._s3 is not None:
            return
        session = get_session()
        config = AioConfig(
            signature_version="s3v4",
            # Custom endpoints (MinIO, moto, most S3-compatible stores) serve buckets by path.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # Our own sha256 covers every byte end to end; the default CRC32 checksums on every
            # request are refused by some S3-compatible stores (GCS interop).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=5,
            read_timeout=60,
        )
        region = str(session.get_config_variable("region") or "us-east-1")
        stack = AsyncExitStack()
        self._s3 = await stack.enter_async_context(
            session.create_client(
                "s3", endpoint_url=self.endpoint_url, region_name=region, config=config
            )
        )
        self._stack = stack
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="blobs-s3")

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            self._s3 = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def hash_on_thread(self, hasher: hashlib._Hash, data: bytes | bytearray) -> None:
        # SHA-256 of an 8 MiB part takes ~6 ms here; hashlib releases the GIL, so the loop runs on.
        if self._executor is None:
            raise RuntimeError("the blob store is not open")
        await asyncio.get_running_loop().run_in_executor(self._executor, hasher.update, data)

    async def check(self) -> None:
        with s3_errors(self, "checking the bucket"):
            try:
                await self.s3.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if error_code(exc) in ("404", "NoSuchBucket"):
                    raise BlobStoreUnavailable(
                        f"the S3 bucket {self.bucket!r} does not exist{self._at()}"
                    ) from exc
                raise
            probe = self.upload_key(f".probe-{new_upload_id()}")
            await self.s3.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            await self.s3.delete_object(Bucket=self.bucket, Key=probe)

    def _at(self) -> str:
        return f" at {redacted(self.endpoint_url)}" if self.endpoint_url else ""

    async def stat(self, sha256: str) -> int | None:
        return await self._size_of(self.blob_key(check_sha256(sha256)))

    async def _size_of(self, key: str) -> int | None:
        with s3_errors(self, "reading a blob's size"):
            try:
                head = await self.s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise
            return head["ContentLength"]

    async def read(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.blob_key(check_sha256(sha256))
        if end is not None and start >= end:
            # S3 cannot express an empty range; the blob must still exist and hold `start`.
            size = await self.stat(sha256)
            if size is None:
                raise BlobNotFound(sha256)
            check_range(start, end, size)
            return
        async for chunk in self._read_key(key, start, end, missing=lambda: BlobNotFound(sha256)):
            yield chunk

    async def _read_key(
        self, key: str, start: int, end: int | None, missing: Callable[[], Exception]
    ) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"range [{start}, {end}) is not a range")
        ranged = start > 0 or end is not None
        with s3_errors(self, "reading a blob"):
            try:
                if ranged:
                    stop = "" if end is None else str(end - 1)
                    answer = await self.s3.get_object(
                        Bucket=self.bucket, Key=key, Range=f"bytes={start}-{stop}"
                    )
                else:
                    answer = await self.s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise missing() from exc
                if error_code(exc) != "InvalidRange":
                    raise
                # Refused as well: `bytes=SIZE-`, the empty range at the end of a blob.
                size = await self._size_of(key)
                if size is None:
                    raise missing() from exc
                check_range(start, end, size)
                return
            async with answer["Body"] as body:
                if ranged:
                    # S3 shortens a range that runs past the end instead of refusing it.
                    total = int(answer["ContentRange"].rsplit("/", 1)[1])
                    check_range(start, end, total)
                async for chunk in body.iter_chunks(CHUNK_BYTES):
                    yield chunk

    async def delete(self, sha256: str) -> None:
        with s3_errors(self, "deleting a blob"):
            await self.s3.delete_object(Bucket=self.bucket, Key=self.blob_key(check_sha256(sha256)))

    async def list_blobs(self) -> AsyncIterator[StoredBlob]:
        folder = f"{self.prefix}sha256/"
        with s3_errors(self, "listing blobs"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            async for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(folder) :]
                    if len(name) == 64:
                        yield StoredBlob(name, item["Size"], item["LastModified"])

    async def begin_upload(self, *, resumable: bool = False) -> S3Upload:
        upload_id = new_upload_id() if resumable else new_single_request_id()
        with s3_errors(self, "starting an upload"):
            answer = await self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.upload_key(upload_id)
            )
        return S3Upload(self, upload_id, answer["UploadId"], [], hashlib.sha256())

    async def resume_upload(self, upload_id: str) -> S3Upload:
        if not is_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        key = self.upload_key(upload_id)
        with s3_errors(self, "resuming an upload"):
            multipart_id = await self._multipart_id(key)
            if multipart_id is None:
                raise UploadNotFound(upload_id)
            listed: list[_Part] = []
            pages = self.s3.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=key, UploadId=multipart_id
            )
            try:
                async for page in pages:
                    for item in page.get("Parts", []):
                        listed.append(_Part(item["PartNumber"], item["ETag"], item["Size"]))
            except ClientError as exc:
                if error_code(exc) in _MISSING:  # aborted or completed meanwhile
                    raise UploadNotFound(upload_id) from exc
                raise
        # Only the unbroken run of whole parts from 1 counts (a short part is the last one of a
        # finish that failed); a part after it is sent again, replacing it.
        parts = []
        for expected, part in enumerate(sorted(listed, key=lambda p: p.number), start=1):
            if part.number != expected or part.size < MIN_PART_BYTES:
                break
            parts.append(part)
        with s3_errors(self, "resuming an upload"):
            tail, tail_staged = await self._staged_tail(upload_id, len(parts))
        # The parts of an unfinished multipart upload cannot be read back: without the hash this
        # process kept when the last request left exactly these parts, a resumed upload is hashed
        # at `finish`, from the assembled object. One without parts hashes as it goes (its tail is
        # in the buffer, hashed with the rest).
        hasher = self.hash_states.take(upload_id, _described(multipart_id, parts))
        if not parts:
            hasher = hashlib.sha256()
        upload = S3Upload(self, upload_id, multipart_id, parts, hasher)
        upload.load_tail(tail, tail_staged)
        return upload

    async def _staged_tail(self, upload_id: str, parts: int) -> tuple[bytes, bool]:
        """The tail `close` staged after `parts` whole parts (b"" if none, or if it is stale), and
        whether a tail object exists at all."""
        try:
            answer = await self.s3.get_object(Bucket=self.bucket, Key=self.tail_key(upload_id))
        except ClientError as exc:
            if error_code(exc) in _MISSING:
                return b"", False
            raise
        async with answer["Body"] as body:
            data = await body.read()
        if answer.get("Metadata", {}).get(_AFTER_PARTS) != str(parts):
            return b"", True
        return data, True

    async def _multipart_id(self, key: str) -> str | None:
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=key
        )
        found: tuple[datetime, str] | None = None
        async for page in pages:
            for item in page.get("Uploads", []):
                if item["Key"] == key and (found is None or item["Initiated"] > found[0]):
                    found = (item["Initiated"], item["UploadId"])
        return None if found is None else found[1]

    def list_uploads(self) -> AsyncIterator[StagedUpload]:
        return self._list_staged(resumable=None)

    async def _list_staged(self, *, resumable: bool | None) -> AsyncIterator[StagedUpload]:
        """The staged uploads of one kind, or of both when `resumable` is None (the parts of the
        other kind's multipart uploads are not listed: a request each)."""
        folder = f"{self.prefix}uploads/"
        with s3_errors(self, "listing staged uploads"):
            uploads = self.s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            async for page in uploads:
                for item in page.get("Uploads", []):
                    upload = staged_upload(item["Key"][len(folder) :], item["Initiated"])
                    if upload is None or resumable not in (None, upload.resumable):
                        continue
                    touched = await self._last_part_time(item["Key"], item["UploadId"])
                    if touched is not None and touched > upload.touched:
                        upload = replace(upload, touched=touched)
                    yield upload
            # Presigned PUTs not yet checked, and staged objects a crash left before their copy.
            objects = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            async for listing in objects:
                for entry in listing.get("Contents", []):
                    name = entry["Key"][len(folder) :].removesuffix(_TAIL)
                    upload = staged_upload(name, entry["LastModified"])
                    if upload is not None and resumable in (None, upload.resumable):
                        yield upload

    async def _last_part_time(self, key: str, multipart_id: str) -> datetime | None:
        latest = None
        try:
            pages = self.s3.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=key, UploadId=multipart_id
            )
            async for page in pages:
                for item in page.get("Parts", []):
                    if latest is None or item["LastModified"] > latest:
                        latest = item["LastModified"]
        except ClientError as exc:
            if error_code(exc) not in _MISSING:
                raise
        return latest

    async def expire_uploads(self, older_than: timedelta) -> int:
        return await self._remove_untouched(older_than, "removing expired uploads")

    async def remove_dropped_uploads(self, idle: timedelta) -> int:
        # No lock says whether a request still writes a multipart upload: one that was not written
        # to for `idle` is taken for dropped.
        return await self._remove_untouched(
            idle, "removing the staged bytes of dropped uploads", resumable=False
        )

    async def _remove_untouched(
        self, older_than: timedelta, doing: str, *, resumable: bool | None = None
    ) -> int:
        """Remove the staged uploads (of one kind, or both when `resumable` is None) not written
        to for `older_than`."""
        cutoff = datetime.now(UTC) - older_than
        # An id can be listed twice (a multipart upload and its completed object): newest counts.
        touched: dict[str, datetime] = {}
        async for upload in self._list_staged(resumable=resumable):
            touched[upload.upload_id] = max(
                upload.touched, touched.get(upload.upload_id, upload.touched)
            )
        stale = [upload_id for upload_id, when in touched.items() if when < cutoff]
        with s3_errors(self, doing):
            for upload_id in stale:
                await self._discard_staged(upload_id)
        return len(stale)

    async def _discard_staged(self, upload_id: str, *, tail: bool = True) -> None:
        """Remove whatever is staged under the id: a multipart upload, a staged object, a tail
        (unless the caller knows there is none)."""
        self.hash_states.drop(upload_id)
        key = self.upload_key(upload_id)
        while (multipart_id := await self._multipart_id(key)) is not None:
            try:
                await self.s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=multipart_id
                )
            except ClientError as exc:
                if error_code(exc) not in _MISSING:
                    raise
        await self.s3.delete_object(Bucket=self.bucket, Key=key)
        if tail:
            await self.s3.delete_object(Bucket=self.bucket, Key=self.tail_key(upload_id))

    async def presign_get(
        self, sha256: str, expires_in: timedelta, filename: str | None = None
    ) -> str | None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.blob_key(check_sha256(sha256))}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        with s3_errors(self, "signing a download"):
            return await self.s3.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=_seconds(expires_in)
            )

    async def presign_put(self, sha256: str, size: int, expires_in: timedelta) -> PresignedPut:
        checksum = base64.b64encode(bytes.fromhex(check_sha256(sha256))).decode()
        upload_id = new_upload_id()
        params = {
            "Bucket": self.bucket,
            "Key": self.upload_key(upload_id),
            # Signed in: AWS S3 and MinIO refuse a body with another SHA-256 or length. Not every
            # S3-compatible store checks (moto does not), so complete_presigned_put hashes again.
            "ChecksumSHA256": checksum,
            "ContentLength": size,
        }
        with s3_errors(self, "signing an upload"):
            url = await self.s3.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=_seconds(expires_in)
            )
        headers = {"x-amz-checksum-sha256": checksum, "content-length": str(size)}
        return PresignedPut(upload_id, url, headers)

    async def complete_presigned_put(
        self, upload_id: str, expected_sha256: str, on_digest: OnDigest | None = None
    ) -> BlobInfo:
        check_sha256(expected_sha256)
        if not is_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        return await self.publish_staged(upload_id, expected_sha256, None, on_digest)

    async def publish_staged(
        self,
        upload_id: str,
        expected_sha256: str | None,
        known: BlobInfo | None,
        on_digest: OnDigest | None,
        *,
        read_back: bool = False,
    ) -> BlobInfo:
        """Make the staged object `uploads/<id>` the blob it hashes to (hashing it first unless
        `known`), then remove it. DigestMismatch and an existing blob remove it too. `read_back`:
        the bytes came through this server (a resumed upload), so hashing them counts in
        `rehashed_bytes`."""
        key = self.upload_key(upload_id)
        with s3_errors(self, "storing a blob"):
            try:
                if known is None:
                    blob = await self._hash_object(key, upload_id)
                    if read_back:
                        self.rehashed_bytes += blob.size
                else:
                    blob = known
                if expected_sha256 is not None and blob.sha256 != expected_sha256:
                    raise DigestMismatch(expected_sha256, blob.sha256)
                if on_digest is not None and known is None:
                    await on_digest(blob)
                if await self.stat(blob.sha256) is None:
                    await self._copy(key, self.blob_key(blob.sha256), blob.size)
            finally:
                await self.s3.delete_object(Bucket=self.bucket, Key=key)
        return blob

    async def _hash_object(self, key: str, upload_id: str) -> BlobInfo:
        hasher = hashlib.sha256()
        size = 0
        async for chunk in self._read_key(key, 0, None, missing=lambda: UploadNotFound(upload_id)):
            await self.hash_on_thread(hasher, chunk)
            size += len(chunk)
        return BlobInfo(hasher.hexdigest(), size)

    async def _copy(self, source: str, target: str, size: int) -> None:
        copy_source = {"Bucket": self.bucket, "Key": source}
        if size <= self.copy_limit:
            await self.s3.copy_object(Bucket=self.bucket, Key=target, CopySource=copy_source)  # type: ignore[arg-type]
            return
        multipart_id = (await self.s3.create_multipart_upload(Bucket=self.bucket, Key=target))[
            "UploadId"
        ]
        try:
            done = []
            for number, first in enumerate(range(0, size, self.copy_part_bytes), start=1):
                last = min(first + self.copy_part_bytes, size) - 1
                answer = await self.s3.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=multipart_id,
                    PartNumber=number,
                    CopySource=copy_source,  # type: ignore[arg-type]
                    CopySourceRange=f"bytes={first}-{last}",
                )
                done.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            await self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=target,
                UploadId=multipart_id,
                MultipartUpload={"Parts": done},  # type: ignore[typeddict-item]
            )
        except BaseException:
            await self.s3.abort_multipart_upload(
                Bucket=self.bucket, Key=target, UploadId=multipart_id
            )
            raise

    def part_size(self, number: int) -> int:
        return self.part_bytes * (1 + (number - 1) // 1000)


@dataclass(frozen=True, slots=True)
class _Part:
    number: int
    etag: str
    size: int


class S3Upload:
    """A multipart upload to `uploads/<id>`: bytes are buffered up to one part, hashed on a thread
    and sent. `finish` checks the digest before anything becomes visible.

    S3 takes a part under 5 MiB only as the last one, so `close` stages what is buffered past the
    last whole part as an object of its own (`uploads/<id>.tail`), and a resume reads it back into
    the buffer: every byte written is kept, as in the local store. Without that, a resumable upload
    (one request per PATCH, another for `complete`) lost its short last piece."""

    def __init__(
        self,
        store: S3BlobStore,
        upload_id: str,
        multipart_id: str,
        parts: list[_Part],
        hasher: hashlib._Hash | None,
    ) -> None:
        self._store = store
        self._id = upload_id
        self._key = store.upload_key(upload_id)
        self._multipart_id = multipart_id
        self._parts = parts
        self._hasher = hasher  # None: resumed after parts were sent; hashed again at finish
        self._buffer = bytearray()
        self._closed = False
        self._tail_staged = False  # a tail object may exist: removed once the upload ends
        self._written = False  # bytes came since the tail was staged or loaded

    def load_tail(self, tail: bytes, staged: bool) -> None:
        """Continue after the bytes `close` staged past the parts (see S3BlobStore.resume_upload)."""
        self._buffer += tail
        self._tail_staged = staged

    @property
    def id(self) -> str:
        return self._id

    @property
    def offset(self) -> int:
        return sum(part.size for part in self._parts) + len(self._buffer)

    async def write(self, chunk: bytes) -> None:
        if self._closed:
            raise RuntimeError(f"upload {self._id} is closed")
        self._buffer += chunk
        self._written = True
        try:
            while len(self._buffer) >= self._store.part_size(len(self._parts) + 1):
                size = self._store.part_size(len(self._parts) + 1)
                with memoryview(self._buffer) as view:
                    part = bytes(view[:size])  # the one copy a part costs
                del self._buffer[:size]
                await self._send(part)
        except BaseException:
            # What S3 holds is whole parts; the client resumes from there (resume_upload).
            self._closed = True
            self._buffer = bytearray()
            raise

    async def _send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise BlobStoreUnavailable(f"an upload to S3 can have at most {MAX_PARTS} parts")
        store = self._store
        with s3_errors(store, "uploading a part"):
            try:
                answer = await store.s3.upload_part(
                    Bucket=store.bucket,
                    Key=self._key,
                    UploadId=self._multipart_id,
                    PartNumber=number,
                    Body=data,
                )
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise UploadNotFound(self._id) from exc
                raise
        # Hashed once S3 has the part: a part that failed is sent again, and must be hashed once.
        if self._hasher is not None:
            await store.hash_on_thread(self._hasher, data)
        self._parts.append(_Part(number, answer["ETag"], len(data)))

    async def finish(
        self, expected_sha256: str | None = None, on_digest: OnDigest | None = None
    ) -> BlobInfo:
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        if self._closed:
            raise RuntimeError(f"upload {self._id} is closed")
        self._closed = True
        store = self._store
        try:
            if self._hasher is not None:
                await store.hash_on_thread(self._hasher, self._buffer)
                blob = BlobInfo(self._hasher.hexdigest(), self.offset)
                if expected_sha256 is not None and blob.sha256 != expected_sha256:
                    await self._abort()
                    raise DigestMismatch(expected_sha256, blob.sha256)
                if on_digest is not None:
                    await on_digest(blob)
                if await store.stat(blob.sha256) is not None:
                    await self._abort()
                    return blob
                if not self._parts:
                    # Smaller than a part: one PUT straight to the blob's key, and S3 checks it.
                    await self._put_whole(blob)
                    return blob
            else:
                blob = None
            if self._buffer or not self._parts:
                await self._send(bytes(self._buffer))
            self._buffer = bytearray()
            with s3_errors(store, "completing an upload"):
                await store.s3.complete_multipart_upload(
                    Bucket=store.bucket,
                    Key=self._key,
                    UploadId=self._multipart_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in self._parts]
                    },
                )
        except BaseException:
            self._buffer = bytearray()
            raise
        try:
            return await store.publish_staged(
                self._id, expected_sha256, blob, on_digest, read_back=blob is None
            )
        finally:
            # The staged object is gone whatever happened there, and with it the upload.
            if self._tail_staged:
                with s3_errors(store, "removing a staged upload"):
                    await store.s3.delete_object(Bucket=store.bucket, Key=store.tail_key(self._id))

    async def _put_whole(self, blob: BlobInfo) -> None:
        store = self._store
        with s3_errors(store, "storing a blob"):
            await store.s3.put_object(
                Bucket=store.bucket,
                Key=store.blob_key(blob.sha256),
                Body=bytes(self._buffer),
                ChecksumSHA256=base64.b64encode(bytes.fromhex(blob.sha256)).decode(),
            )
        self._buffer = bytearray()
        await self._abort()

    async def _abort(self) -> None:
        store = self._store
        with s3_errors(store, "removing a staged upload"):
            await store._discard_staged(self._id, tail=self._tail_staged)

    async def abort(self) -> None:
        self._closed = True
        self._buffer = bytearray()
        await self._abort()

    async def close(self) -> None:
        if self._closed:  # finished, aborted, or a write failed (then the last staged tail holds)
            return
        self._closed = True
        store = self._store
        if self._hasher is not None and self._parts and is_upload_id(self._id):
            # The hash of the parts (the tail is hashed at `finish`), for the next request here.
            store.hash_states.keep(
                self._id, _described(self._multipart_id, self._parts), self._hasher
            )
        if not self._written:
            self._buffer = bytearray()
            return
        tail, self._buffer = bytes(self._buffer), bytearray()
        with s3_errors(store, "saving a staged upload"):
            if tail:
                await store.s3.put_object(
                    Bucket=store.bucket,
                    Key=store.tail_key(self._id),
                    Body=tail,
                    Metadata={_AFTER_PARTS: str(len(self._parts))},
                )
                self._tail_staged = True
            elif self._tail_staged:
                await store.s3.delete_object(Bucket=store.bucket, Key=store.tail_key(self._id))


def _described(multipart_id: str, parts: list[_Part]) -> tuple[str, tuple[_Part, ...]]:
    """Staged parts as the hash kept for them knows them: a part sent again has another ETag."""
    return multipart_id, tuple(parts)


def _seconds(expires_in: timedelta) -> int:
    seconds = int(expires_in.total_seconds())
    if not 1 <= seconds <= 7 * 24 * 3600:
        raise ValueError("a presigned URL lasts from 1 second to 7 days")
    return seconds


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def s3_errors(store: S3BlobStore, doing: str) -> Iterator[None]:
    """S3 and network failures as BlobStoreUnavailable, with what failed and where."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        message = error.get("Message", "")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            message = f"{message} (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION)"
        raise BlobStoreUnavailable(
            f"S3 refused {doing} in s3://{store.bucket}/{store.prefix}{store._at()}: "
            f"{code} {message}".rstrip()
        ) from exc
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
        raise BlobStoreUnavailable(f"S3 unreachable while {doing}{store._at()}: {exc}") from exc
