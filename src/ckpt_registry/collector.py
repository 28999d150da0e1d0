"""Garbage collection, for the server's periodic task and `ckpt db gc` alike: finish model deletes cut
short, purge old tombstones, forget expired uploads, remove what dropped requests staged, and remove
blobs no file references."""

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
    dropped_uploads: int
    blobs: int
    freed_bytes: int


async def collect(
    storage: Storage,
    blobs: BlobStore | None,
    *,
    tombstone_ttl: float,
    blob_grace: float,
    upload_ttl: float,
    put_idle: float,
) -> Collected:
    """One pass; every age is in seconds. Blobs go last, so the files of the models and uploads
    finished here already count as gone. Without a blob store (`ckpt db gc` on PostgreSQL with no
    `--blob-url`) uploads and blobs are left alone.

    A resumable upload's staged bytes are kept for `upload_ttl` (a client may come back to them);
    a plain PUT's are removed once no request writes them (S3, which cannot tell: after `put_idle`
    without a write). Bytes staged by older versions are all named as resumable: the TTL takes them."""
    now = datetime.now(UTC)
    finished = await storage.purge_deleted_models()
    tombstones = await storage.purge_tombstones(now - timedelta(seconds=tombstone_ttl))
    if blobs is None:
        return Collected(finished, tombstones, 0, 0, 0, 0)
    expired = await storage.expire_uploads(now - timedelta(seconds=upload_ttl))
    for upload_id in expired:
        with contextlib.suppress(UploadNotFound, UploadInUse):
            await (await blobs.resume_upload(uuid.UUID(upload_id).hex)).abort()
    # Staged bytes no upload row names (a process killed between the two) go after the same age.
    await blobs.expire_uploads(timedelta(seconds=upload_ttl))
    dropped = await blobs.remove_dropped_uploads(timedelta(seconds=put_idle))
    removed, freed = await storage.collect_blobs(now - timedelta(seconds=blob_grace), blobs.delete)
    return Collected(finished, tombstones, len(expired), dropped, removed, freed)
