"""Blob store URLs: which store a `--blob-url` names, and the default folder beside a SQLite file."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..storage.urls import UnsupportedDatabaseUrl, backend_of, redacted, sqlite_path
from .base import BlobStore
from .errors import InvalidBlobUrl
from .local import LocalBlobStore

ACCEPTED = (
    "use a folder (/var/lib/ckpt/blobs or file:///var/lib/ckpt/blobs) or s3://BUCKET/PREFIX "
    "(set it with --blob-url or CKPT_BLOB_URL; the S3 endpoint comes from AWS_ENDPOINT_URL)"
)


def open_blob_store(url: str, *, endpoint_url: str | None = None) -> BlobStore:
    """The store `url` names, not yet opened. `endpoint_url` (an S3-compatible server such as
    http://127.0.0.1:9000) wins over AWS_ENDPOINT_URL; plain http is allowed."""
    if url.startswith("s3://"):
        parts = urlsplit(url)
        if not parts.netloc or parts.query or parts.fragment:
            raise InvalidBlobUrl(f"unsupported blob URL {redacted(url)!r}: {ACCEPTED}")
        if "@" in parts.netloc:
            raise InvalidBlobUrl(
                f"blob URL {redacted(url)!r} carries credentials: give them to S3 as "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile), never in the URL"
            )
        try:
            from .s3 import S3BlobStore
        except ImportError as exc:
            raise InvalidBlobUrl(
                f"blob URL {redacted(url)!r} needs the S3 client: pip install 'ckpt-registry[s3]'"
            ) from exc
        return S3BlobStore(parts.netloc, unquote(parts.path), endpoint_url=endpoint_url)
    if url.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidBlobUrl(f"unsupported blob URL {redacted(url)!r}: {ACCEPTED}")
        return LocalBlobStore(Path(unquote(parts.path)))
    if not url or "://" in url:
        raise InvalidBlobUrl(f"unsupported blob URL {redacted(url)!r}: {ACCEPTED}")
    return LocalBlobStore(Path(url).expanduser().resolve())


def default_blob_url(database_url: str) -> str | None:
    """The folder beside a SQLite file (`ckpt.db` keeps its blobs in `ckpt.db-blobs`, like its
    `-wal`), so `scripts/serve` needs no new setting. None for PostgreSQL: servers that share a
    database must share a store, so it has to be named (CKPT_BLOB_URL)."""
    try:
        if backend_of(database_url) != "sqlite":
            return None
    except UnsupportedDatabaseUrl:
        return None
    path = sqlite_path(database_url).expanduser().resolve()
    return path.with_name(f"{path.name}-blobs").as_uri()
