"""`ckpt db backup` and `ckpt db restore` for SQLite: a consistent snapshot taken with SQLite's online
backup API while the server keeps serving, beside a copy of every blob a file record in it names.

A backup is a folder: `ckpt.db` (the snapshot), `blobs/` (a local blob store holding the referenced
blobs) and `backup.json` (what was taken, from where, when). PostgreSQL has its own tool, pg_dump.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from . import __version__
from .blobs.copy import copy_store
from .storage.compat import known_revision
from .storage.urls import backend_of, sqlite_path

SNAPSHOT = "ckpt.db"
BLOBS = "blobs"
MANIFEST = "backup.json"


class BackupRefused(Exception):
    """Nothing was written: the message says why and what to do."""


@dataclass(frozen=True)
class BackupSummary:
    revision: str
    models: int
    checkpoints: int
    files: int
    blobs: int
    blob_bytes: int


def pg_dump_advice(database_url: str) -> str:
    return (
        "PostgreSQL is backed up with its own tools, not by ckpt: "
        "pg_dump --format=custom --file ckpt.dump DATABASE (and pg_restore to bring it back), "
        "taken while the server runs; back up the blob store (CKPT_BLOB_URL) beside it "
        "(a folder: copy it after the dump; S3: bucket versioning or replication)"
        if backend_of(database_url) == "postgresql"
        else ""
    )


def _counts(db: sqlite3.Connection) -> tuple[str, int, int, int, list[str]]:
    revision = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    models = db.execute("SELECT count(*) FROM models WHERE deleted_at IS NULL").fetchone()[0]
    checkpoints = db.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    files = db.execute("SELECT count(*) FROM checkpoint_files").fetchone()[0]
    sha256s = [
        row[0] for row in db.execute("SELECT DISTINCT sha256 FROM checkpoint_files ORDER BY sha256")
    ]
    return str(revision), models, checkpoints, files, sha256s


def _snapshot(source: Path, target: Path) -> None:
    """Copy the database page by page with SQLite's backup API, in one step: one read transaction,
    so one consistent state, while the server's writer goes on (WAL readers do not block it)."""
    with (
        contextlib.closing(sqlite3.connect(source, timeout=30)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")  # a single file, whatever the source used


def _empty_folder(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupRefused(f"{dest} exists and is not an empty folder: name a new one")
    dest.mkdir(parents=True, exist_ok=True)


async def backup(database_url: str, blob_url: str | None, dest: Path) -> BackupSummary:
    if backend_of(database_url) != "sqlite":
        raise BackupRefused(pg_dump_advice(database_url))
    source = sqlite_path(database_url)
    if not source.exists():
        raise BackupRefused(f"there is no database at {source}")
    _empty_folder(dest)
    _snapshot(source, dest / SNAPSHOT)
    with contextlib.closing(sqlite3.connect(dest / SNAPSHOT)) as db:
        revision, models, checkpoints, files, sha256s = _counts(db)
    copied = copied_bytes = 0
    if sha256s:
        if blob_url is None:
            raise BackupRefused("the database has files: name their blob store with --blob-url")
        copied, copied_bytes = await copy_store(blob_url, dest / BLOBS, sha256s)
    (dest / MANIFEST).write_bytes(
        orjson.dumps(
            {
                "taken_at": datetime.now(UTC).isoformat(),
                "ckpt_registry": __version__,
                "schema": revision,
                "database": str(source),
                "blob_store": blob_url,
                "models": models,
                "checkpoints": checkpoints,
                "files": files,
                "blobs": len(sha256s),
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return BackupSummary(revision, models, checkpoints, files, copied, copied_bytes)


async def restore(src: Path, database_url: str, blob_url: str | None) -> BackupSummary:
    """Bring a backup back as the SQLite database at `database_url` (which must not exist yet)
    and its blobs into `blob_url`'s store."""
    if backend_of(database_url) != "sqlite":
        raise BackupRefused(
            "a backup restores to SQLite; to move it to PostgreSQL, restore it, then "
            "ckpt db copy --from sqlite:///... --to postgresql://..."
        )
    snapshot = src / SNAPSHOT
    if not snapshot.is_file():
        raise BackupRefused(f"{src} is not a backup: it has no {SNAPSHOT}")
    target = sqlite_path(database_url)
    if target.exists():
        raise BackupRefused(
            f"{target} exists: stop its server and move it away first (restore never overwrites)"
        )
    with contextlib.closing(sqlite3.connect(f"file:{snapshot}?mode=ro", uri=True)) as db:
        revision, models, checkpoints, files, sha256s = _counts(db)
    if not known_revision(revision):
        raise BackupRefused(
            f"the backup's schema ({revision}) is newer than this ckpt-registry {__version__} knows"
        )
    copied = copied_bytes = 0
    if sha256s:
        if blob_url is None:
            raise BackupRefused("the backup has files: name the blob store with --blob-url")
        copied, copied_bytes = await copy_store(str(src / BLOBS), blob_url, sha256s)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".restoring")
    partial.unlink(missing_ok=True)
    _snapshot(snapshot, partial)
    with contextlib.closing(sqlite3.connect(partial)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # as the server runs it
    partial.rename(target)  # the database appears whole, after its blobs
    return BackupSummary(revision, models, checkpoints, files, copied, copied_bytes)
