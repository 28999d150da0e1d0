"""The S3 store on moto's S3 server: direct transfers, the copy of large blobs, failures, memory."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import httpx
import pytest

from ckpt_registry.blobs import (
    BlobStoreUnavailable,
    DigestMismatch,
    UploadNotFound,
    open_blob_store,
)
from ckpt_registry.blobs.s3 import S3BlobStore

from .conftest import MIB, S3_PART_BYTES, free_port, rss_bytes

pytestmark = pytest.mark.anyio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(store: S3BlobStore, data: bytes) -> str:
    upload = await store.begin_upload()
    await upload.write(data)
    return (await upload.finish()).sha256


async def test_presigned_get(s3_store: S3BlobStore) -> None:
    data = os.urandom(3 * MIB)
    blob = await put(s3_store, data)

    url = await s3_store.presign_get(
        blob, timedelta(minutes=5), filename="adapter_model.safetensors"
    )
    assert url is not None
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
        ranged = await client.get(url, headers={"Range": "bytes=10-19"})

    assert answer.status_code == 200
    assert answer.content == data
    assert 'filename="adapter_model.safetensors"' in answer.headers["content-disposition"]
    assert ranged.status_code == 206
    assert ranged.content == data[10:20]


async def test_presigned_put(s3_store: S3BlobStore) -> None:
    data = os.urandom(2 * MIB)
    direct = await s3_store.presign_put(sha(data), len(data), timedelta(minutes=5))
    assert direct is not None
    assert direct.headers["x-amz-checksum-sha256"]

    async with httpx.AsyncClient() as client:
        answer = await client.put(direct.url, content=data, headers=direct.headers)
    assert answer.status_code == 200, answer.text
    assert await s3_store.stat(sha(data)) is None  # not visible until checked

    blob = await s3_store.complete_presigned_put(direct.upload_id, sha(data))

    assert (blob.sha256, blob.size) == (sha(data), len(data))
    assert b"".join([chunk async for chunk in s3_store.read(blob.sha256)]) == data
    assert [u async for u in s3_store.list_uploads()] == []
    with pytest.raises(UploadNotFound):
        await s3_store.complete_presigned_put(direct.upload_id, sha(data))


async def test_presigned_put_of_other_bytes_never_becomes_the_blob(s3_store: S3BlobStore) -> None:
    data = os.urandom(MIB)
    wrong = os.urandom(MIB)  # same length, other content
    direct = await s3_store.presign_put(sha(data), len(data), timedelta(minutes=5))
    assert direct is not None

    async with httpx.AsyncClient() as client:
        answer = await client.put(direct.url, content=wrong, headers=direct.headers)
    # AWS S3 and MinIO refuse this PUT (BadDigest); moto stores it, so the server's own hash decides.
    assert answer.status_code == 200, answer.text

    with pytest.raises(DigestMismatch):
        await s3_store.complete_presigned_put(direct.upload_id, sha(data))

    assert await s3_store.stat(sha(data)) is None
    assert await s3_store.stat(sha(wrong)) is None
    assert [b async for b in s3_store.list_blobs()] == []
    assert [u async for u in s3_store.list_uploads()] == []


async def test_completing_a_presigned_put_that_never_came(s3_store: S3BlobStore) -> None:
    direct = await s3_store.presign_put(sha(b"x"), 1, timedelta(minutes=5))
    assert direct is not None
    with pytest.raises(UploadNotFound):
        await s3_store.complete_presigned_put(direct.upload_id, sha(b"x"))
    with pytest.raises(UploadNotFound):
        await s3_store.complete_presigned_put("../sha256/x", sha(b"x"))


async def test_unchecked_presigned_puts_expire(s3_store: S3BlobStore) -> None:
    direct = await s3_store.presign_put(sha(b"x"), 1, timedelta(minutes=5))
    assert direct is not None
    async with httpx.AsyncClient() as client:
        assert (await client.put(direct.url, content=b"x", headers=direct.headers)).is_success

    assert [u.upload_id async for u in s3_store.list_uploads()] == [direct.upload_id]
    assert await s3_store.expire_uploads(timedelta(seconds=-1)) == 1
    assert [u async for u in s3_store.list_uploads()] == []


async def test_a_plain_put_s_upload_is_taken_for_dropped_only_after_the_idle_time(
    s3_store: S3BlobStore,
) -> None:
    # S3 has no lock: a request that sends a part more often than the idle time is kept. moto dates
    # every multipart upload 2010, so this holds only because the id says when the upload began.
    begun = await s3_store.begin_upload()
    assert await s3_store.remove_dropped_uploads(timedelta(minutes=5)) == 0
    await begun.write(os.urandom(S3_PART_BYTES + 1))  # one part sent, one byte buffered
    assert await s3_store.remove_dropped_uploads(timedelta(minutes=5)) == 0
    assert (await begun.finish()).size == S3_PART_BYTES + 1

    dropped = await s3_store.begin_upload()
    await dropped.write(os.urandom(S3_PART_BYTES + 1))
    staged = [u async for u in s3_store.list_uploads()]
    assert [(u.upload_id, u.resumable) for u in staged] == [(dropped.id, False)]
    assert await s3_store.remove_dropped_uploads(timedelta(seconds=-1)) == 1
    assert [u async for u in s3_store.list_uploads()] == []


async def test_a_blob_above_the_copy_limit_is_copied_in_parts(s3_store: S3BlobStore) -> None:
    s3_store.copy_limit = 5 * MIB
    s3_store.copy_part_bytes = 5 * MIB
    data = os.urandom(12 * MIB)
    upload = await s3_store.begin_upload()
    await upload.write(data)
    blob = await upload.finish(sha(data))

    assert b"".join([chunk async for chunk in s3_store.read(blob.sha256)]) == data


@pytest.mark.usefixtures("aws_env")
async def test_check_names_a_missing_bucket() -> None:
    store = open_blob_store("s3://no-such-bucket-here/p")
    await store.open()
    try:
        with pytest.raises(BlobStoreUnavailable, match="no-such-bucket-here"):
            await store.check()
    finally:
        await store.close()


@pytest.mark.usefixtures("aws_env")
async def test_an_unreachable_endpoint_is_unavailable() -> None:
    store = open_blob_store("s3://bucket/p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert isinstance(store, S3BlobStore)
    store.max_attempts = 1  # the answer, not botocore's backoff, is what this test is about
    await store.open()
    try:
        with pytest.raises(BlobStoreUnavailable, match="unreachable"):
            await store.check()
        with pytest.raises(BlobStoreUnavailable):
            await store.begin_upload()
    finally:
        await store.close()


async def test_memory_is_bounded_by_one_part(s3_store: S3BlobStore) -> None:
    total = 64 * MIB
    piece = os.urandom(64 * 1024)
    baseline = rss_bytes()
    peak = baseline
    upload = await s3_store.begin_upload()
    for n in range(total // len(piece)):
        await upload.write(piece)
        if n % 64 == 0:
            peak = max(peak, rss_bytes())
    blob = await upload.finish()
    async for _ in s3_store.read(blob.sha256):
        peak = max(peak, rss_bytes())

    assert blob.size == total
    # A 5 MiB part buffered, its copy on the wire, and the HTTP client's buffers.
    assert peak - baseline < 40 * MIB, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"
