"""The local folder store: its layout, a full disk, locks between writers, and flat memory."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ckpt_registry.blobs import BlobStoreUnavailable, UploadInUse, open_blob_store
from ckpt_registry.blobs.hashstates import HashStates
from ckpt_registry.blobs.local import NEW_FILE_SECONDS, LocalBlobStore

from .conftest import MIB, rss_bytes

pytestmark = pytest.mark.anyio


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalBlobStore]:
    blobs = open_blob_store(f"file://{tmp_path}/blobs")
    assert isinstance(blobs, LocalBlobStore)
    await blobs.open()
    try:
        yield blobs
    finally:
        await blobs.close()


async def test_layout_and_read_only_blobs(local: LocalBlobStore) -> None:
    upload = await local.begin_upload()
    assert (local.root / "uploads" / upload.id).exists()
    await upload.write(b"weights")
    blob = await upload.finish()

    path = local.root / "sha256" / blob.sha256[:2] / blob.sha256
    assert path.read_bytes() == b"weights"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert list((local.root / "uploads").iterdir()) == []
    assert await local.presign_get(blob.sha256, timedelta(minutes=5)) is None
    assert await local.presign_put(blob.sha256, 7, timedelta(minutes=5)) is None


async def test_one_writer_per_upload(local: LocalBlobStore) -> None:
    upload = await local.begin_upload(resumable=True)
    await upload.write(b"x" * (2 * MIB))

    with pytest.raises(UploadInUse):
        await local.resume_upload(upload.id)
    # An upload a request is writing is never expired, however old it looks.
    assert await local.expire_uploads(timedelta(seconds=-1)) == 0

    await upload.close()
    resumed = await local.resume_upload(upload.id)
    assert resumed.offset == 2 * MIB
    await resumed.abort()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(path: Path) -> None:
    """Take every block left on the file system."""
    with open(path, "wb", buffering=0) as file:
        for block in (64 * 1024, 4096):
            try:
                while True:
                    file.write(b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


async def test_a_plain_put_s_staged_file_goes_once_no_request_holds_it(
    local: LocalBlobStore,
) -> None:
    upload = await local.begin_upload()
    assert upload.id.startswith("put-")
    await upload.write(b"x" * (2 * MIB))
    staged = local.uploads_dir / upload.id
    old = time.time() - 3600
    os.utime(staged, (old, old))
    # Its request holds the lock: however long it was not written to, it stays.
    assert await local.remove_dropped_uploads(timedelta(seconds=-1)) == 0
    await upload.write(b"y")
    assert (await upload.finish()).size == 2 * MIB + 1

    dropped = await local.begin_upload()
    await dropped.write(b"x" * (2 * MIB))
    dropped_path = local.uploads_dir / dropped.id
    deadline = time.monotonic() + 10
    while dropped_path.stat().st_size == 0:  # the batch is written on a blob thread
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # An empty file just begun is left alone (its creator takes the lock right after creating it).
    fresh = await local.begin_upload()
    fresh_path = local.uploads_dir / fresh.id
    del dropped, fresh  # their requests died: the locks went with them
    gc.collect()
    assert await local.remove_dropped_uploads(timedelta(hours=1)) == 1  # no wait: the lock told
    assert not dropped_path.exists()
    assert fresh_path.exists()
    old = time.time() - NEW_FILE_SECONDS - 1
    os.utime(fresh_path, (old, old))
    assert await local.remove_dropped_uploads(timedelta(hours=1)) == 1
    assert list(local.uploads_dir.iterdir()) == []


async def test_an_older_version_s_staged_file_waits_for_the_upload_ttl(
    local: LocalBlobStore,
) -> None:
    # Before single-request uploads had names of their own, every staged file was `uploads/<hex>`:
    # it may be a resumable upload's, so only the TTL takes it.
    staged = local.uploads_dir / uuid.uuid4().hex
    staged.write_bytes(b"x" * MIB)
    old = time.time() - 3600
    os.utime(staged, (old, old))
    assert await local.remove_dropped_uploads(timedelta(seconds=-1)) == 0
    assert await local.expire_uploads(timedelta(hours=2)) == 0
    assert staged.exists()
    assert await local.expire_uploads(timedelta(minutes=30)) == 1
    assert not staged.exists()


async def test_full_disk(small_disk: Path) -> None:
    blobs = open_blob_store(str(small_disk / "blobs"))
    await blobs.open()
    try:
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (2 * MIB))
        data = os.urandom(3 * MIB)
        upload = await blobs.begin_upload(resumable=True)

        with pytest.raises(BlobStoreUnavailable, match="full"):
            for start in range(0, len(data), 64 * 1024):
                await upload.write(data[start : start + 64 * 1024])
            await upload.finish()
        fill(filler.with_name("more"))
        with pytest.raises(BlobStoreUnavailable, match="full"):
            await blobs.check()
        assert [blob async for blob in blobs.list_blobs()] == []

        # Space comes back: the cut-off upload continues from its staged bytes, and new ones work.
        filler.unlink()
        filler.with_name("more").unlink()
        await blobs.check()
        resumed = await blobs.resume_upload(upload.id)
        assert 0 < resumed.offset < len(data)
        await resumed.write(data[resumed.offset :])
        blob = await resumed.finish(hashlib.sha256(data).hexdigest())
        assert b"".join([chunk async for chunk in blobs.read(blob.sha256)]) == data

        other = await blobs.begin_upload()
        await other.write(b"next")
        assert (await other.finish()).size == 4
    finally:
        await blobs.close()


async def _round_trip(local: LocalBlobStore, total: int) -> None:
    piece = os.urandom(64 * 1024)
    upload = await local.begin_upload()
    for _ in range(total // len(piece)):
        await upload.write(piece)
    blob = await upload.finish(hashlib.sha256(piece * (total // len(piece))).hexdigest())
    async for _chunk in local.read(blob.sha256):
        pass
    await local.delete(blob.sha256)


async def test_memory_stays_flat_for_a_large_blob(local: LocalBlobStore) -> None:
    # A small blob first: each blob thread's malloc arena grows once to hold a few chunks, a constant
    # that does not depend on the size of a blob. What must not happen after that is growth with it.
    await _round_trip(local, 32 * MIB)
    total = 512 * MIB
    piece = os.urandom(64 * 1024)  # the size of a body chunk from uvicorn
    expected = hashlib.sha256()
    baseline = rss_bytes()
    peak = baseline

    upload = await local.begin_upload()
    for n in range(total // len(piece)):
        await upload.write(piece)
        expected.update(piece)
        if n % 256 == 0:
            peak = max(peak, rss_bytes())
    blob = await upload.finish(expected.hexdigest())

    read_back = hashlib.sha256()
    async for chunk in local.read(blob.sha256):
        read_back.update(chunk)
        peak = max(peak, rss_bytes())

    assert blob.size == total
    assert read_back.hexdigest() == blob.sha256
    # One 1 MiB batch collected, one on a thread, two 4 MiB read chunks (one sent, one read ahead);
    # 16 MiB leaves room for the allocator.
    assert peak - baseline < 16 * MIB, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"
    await local.delete(blob.sha256)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_reader_that_leaves_mid_stream_leaves_no_descriptor_open(
    local: LocalBlobStore,
) -> None:
    data = os.urandom(20 * MIB)
    upload = await local.begin_upload()
    await upload.write(data)
    blob = await upload.finish(hashlib.sha256(data).hexdigest())
    before = _open_descriptors()

    for _ in range(20):
        chunks = local.read(blob.sha256)
        first = await anext(chunks)  # the next chunk is being read ahead now
        assert first == data[: len(first)]
        await chunks.aclose()
    # The last read ahead closes its descriptor when it is over, on a blob thread.
    await local.close()
    assert _open_descriptors() == before


async def test_kept_hashes_are_bounded_and_a_dropped_writer_keeps_none(
    local: LocalBlobStore,
) -> None:
    local.hash_states = HashStates(limit=2)
    uploads = []
    for n in range(3):
        upload = await local.begin_upload(resumable=True)
        await upload.write(bytes([n]) * MIB)
        await upload.close()
        uploads.append(upload.id)
    single = await local.begin_upload()  # a plain PUT's: never resumed, so nothing is kept for it
    await single.write(b"x")
    await single.close()
    assert len(local.hash_states) == 2

    # The least recently left upload lost its hash: it is hashed again, the others are not.
    for upload_id, n in [(uploads[1], 1), (uploads[2], 2), (uploads[0], 0)]:
        resumed = await local.resume_upload(upload_id)
        blob = await resumed.finish(hashlib.sha256(bytes([n]) * MIB).hexdigest())
        assert blob.size == MIB
        assert local.rehashed_bytes == (MIB if n == 0 else 0)

    # A writer dropped mid-upload (a killed request) keeps nothing: its bytes are hashed again.
    upload = await local.begin_upload(resumable=True)
    await upload.write(b"a" * MIB)
    await upload.close()
    resumed = await local.resume_upload(upload.id)
    await resumed.write(b"b" * MIB)
    del resumed
    resumed = await local.resume_upload(upload.id)
    assert resumed.offset == 2 * MIB
    blob = await resumed.finish(hashlib.sha256(b"a" * MIB + b"b" * MIB).hexdigest())
    assert local.rehashed_bytes == 3 * MIB
