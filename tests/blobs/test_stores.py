"""The BlobStore contract, on the local folder and on S3 (moto): what goes in comes out, once, whole."""

from __future__ import annotations

import gc
import hashlib
import os
from datetime import UTC, datetime, timedelta

import pytest

from ckpt_registry.blobs import (
    READ_CHUNK_BYTES,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    DigestMismatch,
    Upload,
    UploadNotFound,
)

from .conftest import MIB

pytestmark = pytest.mark.anyio

SMALL = b"config: {}\n" * 100
MULTIPART = os.urandom(11 * MIB + 12_345)  # three S3 parts of 5 MiB, twelve local chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def write_all(upload: Upload, data: bytes, piece: int = 100_003) -> None:
    """Writes in odd-sized pieces, as a request body arrives."""
    for start in range(0, len(data), piece):
        await upload.write(data[start : start + piece])


async def put(store: BlobStore, data: bytes, expected: str | None = None) -> BlobInfo:
    upload = await store.begin_upload()
    await write_all(upload, data)
    return await upload.finish(expected)


async def read_all(store: BlobStore, sha256: str, start: int = 0, end: int | None = None) -> bytes:
    chunks = [chunk async for chunk in store.read(sha256, start, end)]
    assert all(0 < len(chunk) <= READ_CHUNK_BYTES for chunk in chunks)
    return b"".join(chunks)


async def blob_names(store: BlobStore) -> list[str]:
    return sorted([blob.sha256 async for blob in store.list_blobs()])


async def staged_ids(store: BlobStore) -> list[str]:
    return sorted({upload.upload_id async for upload in store.list_uploads()})


@pytest.mark.parametrize("data", [SMALL, b"", MULTIPART], ids=["small", "empty", "multipart"])
async def test_round_trip(store: BlobStore, data: bytes) -> None:
    await store.check()
    blob = await put(store, data, sha(data))

    assert blob == BlobInfo(sha(data), len(data))
    assert await store.stat(blob.sha256) == len(data)
    assert await read_all(store, blob.sha256) == data
    assert await staged_ids(store) == []


async def test_a_body_in_tiny_pieces(store: BlobStore) -> None:
    # Thousands of pieces: more than one write call takes at once (IOV_MAX), and a last partial batch.
    data = os.urandom(3 * 2048 * 7 + 5)
    upload = await store.begin_upload()
    await write_all(upload, data, piece=7)
    assert upload.offset == len(data)
    assert await upload.finish(sha(data)) == BlobInfo(sha(data), len(data))
    assert await read_all(store, sha(data)) == data


async def test_ranges(store: BlobStore) -> None:
    data = MULTIPART
    blob = await put(store, data)
    size = len(data)
    for start, end in [(0, 10), (5, None), (size - 1, size), (5 * MIB - 3, 5 * MIB + 3), (7, 7)]:
        assert await read_all(store, blob.sha256, start, end) == data[start:end]
    assert await read_all(store, blob.sha256, size, None) == b""
    for start, end in [(0, size + 1), (size + 1, None), (10, 5), (-1, 3)]:
        with pytest.raises(ValueError):
            await read_all(store, blob.sha256, start, end)


async def test_same_content_twice_is_one_blob(store: BlobStore) -> None:
    first = await put(store, MULTIPART)
    second = await put(store, MULTIPART)
    small = await put(store, SMALL)
    again = await put(store, SMALL)

    assert first == second
    assert small == again
    assert await blob_names(store) == sorted([first.sha256, small.sha256])
    assert await staged_ids(store) == []


@pytest.mark.parametrize("data", [SMALL, MULTIPART], ids=["small", "multipart"])
async def test_digest_mismatch_leaves_nothing(store: BlobStore, data: bytes) -> None:
    declared = sha(b"something else")
    upload = await store.begin_upload(resumable=True)
    await write_all(upload, data)

    with pytest.raises(DigestMismatch) as raised:
        await upload.finish(declared)

    assert raised.value.actual == sha(data)
    assert await store.stat(sha(data)) is None
    assert await store.stat(declared) is None
    assert await blob_names(store) == []
    assert await staged_ids(store) == []
    with pytest.raises(UploadNotFound):
        await store.resume_upload(upload.id)


async def test_nothing_is_visible_before_finish(store: BlobStore) -> None:
    upload = await store.begin_upload()
    await write_all(upload, MULTIPART)  # whole parts have reached the store by now

    assert await store.stat(sha(MULTIPART)) is None
    assert await blob_names(store) == []
    with pytest.raises(BlobNotFound):
        await read_all(store, sha(MULTIPART))

    await upload.finish()
    assert await store.stat(sha(MULTIPART)) == len(MULTIPART)


async def test_resume_continues_from_the_staged_offset(store: BlobStore) -> None:
    data = MULTIPART
    upload = await store.begin_upload(resumable=True)
    await write_all(upload, data[: 7 * MIB + 3])
    upload_id = upload.id
    await upload.close()  # the connection dropped

    resumed = await store.resume_upload(upload_id)
    staged = resumed.offset
    # Every byte written (S3: one 5 MiB part and the rest staged beside it).
    assert staged == 7 * MIB + 3
    assert resumed.id == upload_id
    await write_all(resumed, data[staged:])
    blob = await resumed.finish(sha(data))

    assert blob == BlobInfo(sha(data), len(data))
    assert await read_all(store, blob.sha256) == data
    assert await staged_ids(store) == []


async def test_every_byte_of_each_closed_request_is_kept(store: BlobStore) -> None:
    """A resumable upload over HTTP writes each request's bytes and closes: a piece shorter than an
    S3 part must reach the next request, and `finish` (once, it was lost at each close)."""
    data = MULTIPART
    upload = await store.begin_upload(resumable=True)
    upload_id = upload.id
    await upload.close()
    offset = 0
    for end in (100, 3 * MIB, 7 * MIB + 1, 7 * MIB + 1, 10 * MIB, len(data)):
        upload = await store.resume_upload(upload_id)
        assert upload.offset == offset
        await write_all(upload, data[offset:end])
        await upload.close()
        offset = end

    resumed = await store.resume_upload(upload_id)
    assert resumed.offset == len(data)
    assert await resumed.finish(sha(data)) == BlobInfo(sha(data), len(data))
    assert await read_all(store, sha(data)) == data
    assert await staged_ids(store) == []


async def test_bytes_a_part_took_from_a_staged_tail_count_once(store: BlobStore) -> None:
    data = MULTIPART
    upload = await store.begin_upload(resumable=True)
    await write_all(upload, data[: 3 * MIB])
    await upload.close()
    resumed = await store.resume_upload(upload.id)
    await write_all(resumed, data[3 * MIB : 6 * MIB])  # S3: the first part takes the tail
    del resumed  # the process died before any close
    gc.collect()

    again = await store.resume_upload(upload.id)
    # S3: the first part (the staged tail is stale now); local: every whole chunk flushed.
    assert 5 * MIB <= again.offset <= 6 * MIB
    await write_all(again, data[again.offset :])
    assert await again.finish(sha(data)) == BlobInfo(sha(data), len(data))
    assert await read_all(store, sha(data)) == data
    assert await staged_ids(store) == []


async def test_resume_after_an_upload_is_dropped_without_close(store: BlobStore) -> None:
    data = MULTIPART
    upload = await store.begin_upload(resumable=True)
    await write_all(upload, data[: 6 * MIB])
    upload_id = upload.id
    del upload
    gc.collect()

    resumed = await store.resume_upload(upload_id)
    assert 5 * MIB <= resumed.offset <= 6 * MIB
    await write_all(resumed, data[resumed.offset :])
    assert await resumed.finish() == BlobInfo(sha(data), len(data))


async def test_a_dropped_request_s_upload_is_removed_a_resumable_one_kept(store: BlobStore) -> None:
    resumable = await store.begin_upload(resumable=True)
    await write_all(resumable, MULTIPART[: 6 * MIB])
    await resumable.close()
    single = await store.begin_upload()  # a plain PUT's
    await write_all(single, MULTIPART[: 6 * MIB])
    single_id = single.id
    assert await staged_ids(store) == sorted([resumable.id, single_id])
    del single  # its request died: nothing finished, aborted or closed it
    gc.collect()

    assert await store.remove_dropped_uploads(timedelta(seconds=-1)) == 1
    assert await staged_ids(store) == [resumable.id]
    with pytest.raises(UploadNotFound):
        await store.resume_upload(single_id)  # never resumable
    resumed = await store.resume_upload(resumable.id)
    assert 5 * MIB <= resumed.offset <= 6 * MIB
    await write_all(resumed, MULTIPART[resumed.offset :])
    assert await resumed.finish() == BlobInfo(sha(MULTIPART), len(MULTIPART))
    assert await staged_ids(store) == []


async def test_resumed_upload_with_wrong_digest_leaves_nothing(store: BlobStore) -> None:
    upload = await store.begin_upload(resumable=True)
    await write_all(upload, MULTIPART[: 6 * MIB])
    await upload.close()
    resumed = await store.resume_upload(upload.id)
    await write_all(resumed, b"not the rest of it")

    with pytest.raises(DigestMismatch):
        await resumed.finish(sha(MULTIPART))

    assert await blob_names(store) == []
    assert await staged_ids(store) == []


async def test_resume_of_unknown_finished_or_aborted_uploads(store: BlobStore) -> None:
    for upload_id in ["0" * 32, "../../etc/passwd", "", "A" * 32]:
        with pytest.raises(UploadNotFound):
            await store.resume_upload(upload_id)

    finished = await store.begin_upload(resumable=True)
    await finished.write(SMALL)
    await finished.finish()
    with pytest.raises(UploadNotFound):
        await store.resume_upload(finished.id)

    aborted = await store.begin_upload(resumable=True)
    await write_all(aborted, MULTIPART[: 6 * MIB])
    await aborted.abort()
    with pytest.raises(UploadNotFound):
        await store.resume_upload(aborted.id)
    assert await staged_ids(store) == []
    assert await blob_names(store) == [sha(SMALL)]


async def test_delete_is_idempotent(store: BlobStore) -> None:
    blob = await put(store, SMALL)
    kept = await put(store, b"another")

    await store.delete(blob.sha256)
    await store.delete(blob.sha256)
    await store.delete(sha(b"never stored"))

    assert await store.stat(blob.sha256) is None
    with pytest.raises(BlobNotFound):
        await read_all(store, blob.sha256)
    assert await blob_names(store) == [kept.sha256]


async def test_a_read_in_progress_survives_a_delete(store: BlobStore) -> None:
    blob = await put(store, MULTIPART)
    chunks = store.read(blob.sha256)
    first = await anext(chunks)
    await store.delete(blob.sha256)

    rest = [chunk async for chunk in chunks]
    assert first + b"".join(rest) == MULTIPART


async def test_list_blobs(store: BlobStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)
    contents = [SMALL, b"", b"x" * 3000]
    for data in contents:
        await put(store, data)
    staged = await store.begin_upload()  # staged bytes are not blobs
    await staged.write(b"partial")
    await staged.close()

    listed = [blob async for blob in store.list_blobs()]

    assert sorted((b.sha256, b.size) for b in listed) == sorted(
        (sha(data), len(data)) for data in contents
    )
    assert all(
        before < blob.modified <= datetime.now(UTC) + timedelta(minutes=5) for blob in listed
    )


async def test_expire_uploads_removes_only_old_ones(store: BlobStore) -> None:
    upload = await store.begin_upload(resumable=True)
    await write_all(upload, MULTIPART[: 6 * MIB])
    await upload.close()
    assert await staged_ids(store) == [upload.id]

    assert await store.expire_uploads(timedelta(hours=1)) == 0
    assert await staged_ids(store) == [upload.id]

    assert await store.expire_uploads(timedelta(seconds=-1)) == 1
    assert await staged_ids(store) == []
    with pytest.raises(UploadNotFound):
        await store.resume_upload(upload.id)


async def test_invalid_sha256_is_refused_before_any_io(store: BlobStore) -> None:
    for bad in ["../" + "0" * 61, "A" * 64, "0" * 63]:
        with pytest.raises(ValueError):
            await store.stat(bad)
        with pytest.raises(ValueError):
            await store.delete(bad)
        upload = await store.begin_upload()
        await upload.write(b"x")
        with pytest.raises(ValueError):
            await upload.finish(bad)
        await upload.abort()
