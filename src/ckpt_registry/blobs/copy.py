"""Copying blobs from one store to another (`ckpt db backup`, `restore` and `copy`), each one's
digest verified by the receiving store as it is written."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path

from .base import BlobStore
from .errors import BlobError, BlobNotFound
from .local import LocalBlobStore
from .urls import open_blob_store


async def copy_blobs(
    source: BlobStore,
    target: BlobStore,
    sha256s: Iterable[str],
    on_copied: Callable[[str, int], None] | None = None,
) -> tuple[int, int]:
    """Copy each named blob the target lacks; return `(copied, bytes copied)`.

    A blob already in the target is skipped (a store is content-addressed: the same name holds the
    same bytes), so a copy cut short can simply run again. The target's `finish` hashes what it
    received and refuses bytes that do not match the name (DigestMismatch, nothing stored).
    BlobNotFound when the source lacks one: the database names a blob its store no longer has.
    """
    copied = copied_bytes = 0
    for sha256 in sha256s:
        if await target.stat(sha256) is None:
            if await source.stat(sha256) is None:
                raise BlobNotFound(sha256)
            upload = await target.begin_upload()
            try:
                async for chunk in source.read(sha256):
                    await upload.write(chunk)
                info = await upload.finish(expected_sha256=sha256)
            except BaseException:
                with contextlib.suppress(BlobError):  # a refused digest removed it already
                    await upload.abort()
                raise
            copied += 1
            copied_bytes += info.size
            size = info.size
        else:
            size = 0
        if on_copied is not None:
            on_copied(sha256, size)
    return copied, copied_bytes


async def copy_store(
    source_url: str,
    target_url: Path | str,
    sha256s: list[str],
    on_copied: Callable[[str, int], None] | None = None,
) -> tuple[int, int]:
    """Copy the named blobs between two stores (a `Path`: a backup's own folder)."""
    source = open_blob_store(source_url)
    target = (
        LocalBlobStore(target_url) if isinstance(target_url, Path) else open_blob_store(target_url)
    )
    await source.open()
    try:
        await target.open()
        try:
            return await copy_blobs(source, target, sha256s, on_copied)
        finally:
            await target.close()
    finally:
        await source.close()
