"""The collector against an upload in flight, on both databases and both blob stores: a blob an upload
touched within the grace period stays, and an upload of content the collector is removing at that
moment still ends with its file readable (Storage.collect_blobs, Upload.finish(on_digest=...))."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckpt_registry.blobs import BlobInfo, BlobStore, OnDigest, open_blob_store
from ckpt_registry.server.transfers import complete
from ckpt_registry.storage import Storage
from ckpt_registry.storage.base import FileRecord, Model

# The moto fixtures, found by name.
from tests.moto import aws_env, create_bucket, moto_endpoint  # noqa: F401

from .conftest import ENTITY

pytestmark = pytest.mark.anyio

CONTENT = b"the tokenizer every checkpoint shares" * 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["local", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        store = open_blob_store(str(tmp_path / "blobs"))
    else:
        store = open_blob_store(f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/r")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def checkpoint(storage: Storage, model: Model, step: int) -> str:
    created, _ = await storage.register_checkpoint(ENTITY, model.id, step, {})
    return created.id


async def upload(
    storage: Storage,
    blobs: BlobStore,
    model: Model,
    checkpoint_id: str,
    path: str,
    data: bytes,
    *,
    then: OnDigest | None = None,
) -> tuple[FileRecord, bool]:
    """An upload as the files route makes one (the route's own `complete`); `then(blob)` runs once
    the blob is visible, before it becomes the file."""
    staged = await blobs.begin_upload()
    await staged.write(data)

    async def finish(on_digest: OnDigest) -> BlobInfo:
        blob = await staged.finish(sha(data), on_digest)
        if then is not None:
            await then(blob)
        return blob

    return await complete(finish, storage, ENTITY, model.id, checkpoint_id, path)


async def read(blobs: BlobStore, sha256: str) -> bytes:
    return b"".join([chunk async for chunk in blobs.read(sha256)])


async def unreferenced(storage: Storage, blobs: BlobStore, model: Model) -> datetime:
    """CONTENT stored, then its only file deleted: a blob the collector may take. The moment after."""
    first = await checkpoint(storage, model, 1)
    await upload(storage, blobs, model, first, "tokenizer.json", CONTENT)
    await storage.delete_file(ENTITY, model.id, first, "tokenizer.json")
    await asyncio.sleep(0.01)  # timestamps are in microseconds: keep the touch strictly before
    moment = datetime.now(UTC)
    await asyncio.sleep(0.01)
    return moment


async def test_a_blob_touched_within_the_grace_period_is_not_collected(
    storage: Storage, blobs: BlobStore, model: Model
) -> None:
    grace_began = await unreferenced(storage, blobs, model)
    second = await checkpoint(storage, model, 2)
    collected: list[tuple[int, int]] = []

    async def collect_now(_: BlobInfo) -> None:
        # The upload found the blob there and relies on it; it is not referenced yet.
        collected.append(await storage.collect_blobs(grace_began, blobs.delete))

    record, created = await upload(
        storage, blobs, model, second, "tokenizer.json", CONTENT, then=collect_now
    )

    assert collected == [(0, 0)]
    assert created and record.sha256 == sha(CONTENT)
    assert await read(blobs, sha(CONTENT)) == CONTENT
    # Untouched since, and unreferenced once the file goes: then it is collected.
    await storage.delete_file(ENTITY, model.id, second, "tokenizer.json")
    assert await storage.collect_blobs(datetime.now(UTC), blobs.delete) == (1, len(CONTENT))
    assert await blobs.stat(sha(CONTENT)) is None


async def test_an_upload_finishing_while_the_collector_removes_its_content(
    storage: Storage, blobs: BlobStore, model: Model
) -> None:
    grace_began = await unreferenced(storage, blobs, model)
    second = await checkpoint(storage, model, 2)
    removing, go_on = asyncio.Event(), asyncio.Event()

    async def remove_slowly(sha256: str) -> None:
        removing.set()
        await go_on.wait()
        await blobs.delete(sha256)

    collector = asyncio.create_task(storage.collect_blobs(grace_began, remove_slowly))
    await asyncio.wait_for(removing.wait(), 10)
    # The collector holds the blob's row and has not removed the object yet: an upload of the
    # same content, which would find the object there, finishes now.
    uploading = asyncio.create_task(
        upload(storage, blobs, model, second, "tokenizer.json", CONTENT)
    )
    await asyncio.sleep(0.3)
    assert not uploading.done(), "the upload waits for the collector to let go of the blob"
    go_on.set()

    assert await asyncio.wait_for(collector, 10) == (1, len(CONTENT))
    record, created = await asyncio.wait_for(uploading, 10)
    assert created and record.sha256 == sha(CONTENT)
    assert await blobs.stat(sha(CONTENT)) == len(CONTENT)
    assert await read(blobs, sha(CONTENT)) == CONTENT
    assert await storage.collect_blobs(datetime.now(UTC), blobs.delete) == (0, 0)
