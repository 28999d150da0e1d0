"""Garbage collection, for the server's periodic task and `ckpt db gc` alike: finish model deletes cut
short, purge old tombstones, forget expired uploads, and remove blobs no file references."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .blobs import BlobStore, UploadInUse, UploadNotFound
from .storage import Storage


@dataclass(frozen=True, slots=True)
class Collected:
    finished_models: int
    tombstones: int
    expired_uploads: int
    blobs: int
    freed_bytes: int


async def collect(
    storage: Storage,
    blobs: BlobStore | None,
    *,
    tombstone_ttl: float,
    blob_grace: float,
    upload_ttl: float,
) -> Collected:
    """One pass; every age is in seconds. Blobs go last, so the files of the models and uploads
    finished here already count as gone. Without a blob store (`ckpt db gc` on PostgreSQL with no
    `--blob-url`) uploads and blobs are left alone."""
    now = datetime.now(UTC)
    finished = await storage.purge_deleted_models()
    tombstones = await storage.purge_tombstones(now - timedelta(seconds=tombstone_ttl))
    if blobs is None:
        return Collected(finished, tombstones, 0, 0, 0)
    expired = await storage.expire_uploads(now - timedelta(seconds=upload_ttl))
    for upload_id in expired:
        with contextlib.suppress(UploadNotFound, UploadInUse):
            await (await blobs.resume_upload(uuid.UUID(upload_id).hex)).abort()
    # Staged bytes no upload row names (a process killed between the two) go after the same age.
    await blobs.expire_uploads(timedelta(seconds=upload_ttl))
    removed, freed = await storage.collect_blobs(now - timedelta(seconds=blob_grace), blobs.delete)
    return Collected(finished, tombstones, len(expired), removed, freed)
