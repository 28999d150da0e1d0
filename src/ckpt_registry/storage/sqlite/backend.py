"""The SQLite backend: reads on the event loop, writes on one writer thread, WAL mode.

A keyset page costs ~50 us, less than a hand-off to a thread would, so reads run on the event loop on
their own connection and never wait for a lock (WAL readers do not). Every write is a job for the
writer thread (`writer.py`), which commits queued writes together; long operations (a model delete,
a retention run) are split into bounded transactions so none holds the write lock for long.
`synchronous=NORMAL` in WAL mode keeps every committed write across a crash of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ...contract import MAX_STEP, TIMESTAMP_FORMAT
from .. import rules
from ..base import (
    ApiKey,
    BestRule,
    Caller,
    Checkpoint,
    CheckpointPage,
    DeletedStepPage,
    DeleteResult,
    FilePage,
    FileRecord,
    MetricNamePage,
    MetricSeries,
    Mode,
    Model,
    ModelPage,
    ModelSummary,
    Order,
    RetentionResult,
    UploadSession,
    Usage,
    canonical_uuid,
    encode_metrics,
)
from ..errors import (
    CheckpointNotFound,
    CursorExpired,
    DatabaseUnavailable,
    FileConflict,
    FileNotFound,
    InvalidCursor,
    KeyNotFound,
    MetricNotFound,
    ModelNameTaken,
    ModelNotFound,
    UploadNotFound,
)
from ..outages import Episode
from .writer import DISK_FULL, WAL_LIMIT_BYTES, Writer, checkpoint_passively, unavailable

logger = logging.getLogger("ckpt_registry.storage.sqlite")

_PAGE_ASC = (
    "SELECT id, step, metrics FROM checkpoints WHERE model_id = ? AND (step, id) > (?, ?) "
    "ORDER BY step, id LIMIT ?"
)
_PAGE_DESC = (
    "SELECT id, step, metrics FROM checkpoints WHERE model_id = ? AND (step, id) < (?, ?) "
    "ORDER BY step DESC, id DESC LIMIT ?"
)
# The common request in one statement: the model is live and the caller's, `after` names a live
# checkpoint of it, and the page. Any empty result (unknown model or cursor, a deleted checkpoint's
# cursor, the true end of the list) goes through the step-by-step path, which says which it is.
_ONE_STATEMENT_PAGE = {
    (order, with_cursor): (
        "SELECT c.id, c.step, c.metrics FROM checkpoints c WHERE c.model_id = ?1 "
        f"AND (c.step, c.id) {comparison} "
        + (
            "(SELECT step, id FROM checkpoints WHERE id = ?2 AND model_id = ?1) "
            if with_cursor
            else "(?2, ?3) "
        )
        + "AND EXISTS (SELECT 1 FROM models WHERE id = ?1 AND entity = ?4 AND deleted_at IS NULL) "
        f"ORDER BY c.step{direction}, c.id{direction} LIMIT ?5"
    )
    for order, comparison, direction in (("asc", ">", ""), ("desc", "<", " DESC"))
    for with_cursor in (False, True)
}
# Each table holding a model's rows, with its primary key (these tables have no rowid).
_MODEL_ROWS = (
    ("checkpoint_files", "checkpoint_id, path"),
    ("uploads", "id"),
    ("checkpoint_metrics", "model_id, name, step"),
    ("checkpoints", "model_id, step, id"),
    ("checkpoint_tombstones", "id"),
    ("expired_cursors", "id"),
)
# Below/above every real (step, id): steps are >= 0 and ids are 36-character strings.
_BEFORE_FIRST = (-1, "")
_AFTER_LAST = (MAX_STEP, "~")

_CHECKPOINT_COLUMNS = "id, step, metrics, created_at, updated_at"
# A model's metric names after ?2, at most ?3 + 1 of them: one index seek per name (a loose index
# scan), so the cost is the number of names, not of metric rows (0.02 ms for 5 names of 100,000
# checkpoints, where DISTINCT read every row: 122 ms; benchmarks/index_reads.py). Every name has at
# least one character, so `''` comes before them all.
_METRIC_NAMES = (
    "WITH RECURSIVE names(name, n) AS ("
    "SELECT (SELECT MIN(name) FROM checkpoint_metrics WHERE model_id = ?1 AND name > ?2), 1 "
    "UNION ALL SELECT (SELECT MIN(m.name) FROM checkpoint_metrics AS m "
    "WHERE m.model_id = ?1 AND m.name > names.name), n + 1 "
    "FROM names WHERE names.name IS NOT NULL AND n <= ?3) "
    "SELECT name FROM names WHERE name IS NOT NULL"
)
# Between the transactions of a long operation the write lock is free this long, so writers of other
# processes (which ask every millisecond, writer.LOCK_POLL_SECONDS) get it in between.
BATCH_PAUSE_SECONDS = 0.002
_MODEL_COLUMNS = "id, entity, project, name, base_model, created_at"
_KEY_COLUMNS = "id, entity, name, created_at, revoked_at, read_only"
# While writes fail for a full disk, system-check reports it until at least this much is free again.
# Its one-page probe write is no proof on its own: a write that failed for lack of space leaves
# allocated WAL frames behind it, which the probe (and other small writes) fit into while every
# registration of 20 metrics still failed (tests/server/test_sqlite_unavailable.py).
_FREE_BYTES_TO_RECOVER = 1024 * 1024


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a Z: sorts as text in time order."""
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def _model(row: tuple[str, str, str, str, str, str]) -> Model:
    id_, entity, project, name, base_model, created_at = row
    return Model(id_, entity, project, name, base_model, parse_timestamp(created_at))


def _checkpoint(row: tuple[str, int, str, str, str]) -> Checkpoint:
    id_, step, metrics, created_at, updated_at = row
    return Checkpoint(id_, step, metrics, parse_timestamp(created_at), parse_timestamp(updated_at))


def _key(row: tuple[str, str, str, str, str | None, int]) -> ApiKey:
    id_, entity, name, created_at, revoked_at, read_only = row
    return ApiKey(
        id_,
        entity,
        name,
        parse_timestamp(created_at),
        parse_timestamp(revoked_at) if revoked_at else None,
        bool(read_only),
    )


def _require_live_model(db: sqlite3.Connection, entity: str, model_id: str) -> None:
    if canonical_uuid(model_id) is None or not rules.storable(entity):
        raise ModelNotFound()
    row = db.execute(
        "SELECT 1 FROM models WHERE id = ? AND entity = ? AND deleted_at IS NULL",
        (model_id, entity),
    ).fetchone()
    if row is None:
        raise ModelNotFound()


def _checkpoint_by_id(db: sqlite3.Connection, model_id: str, checkpoint_id: str) -> Checkpoint:
    if canonical_uuid(checkpoint_id) is None:
        raise CheckpointNotFound()
    row = db.execute(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = ? AND model_id = ?",
        (checkpoint_id, model_id),
    ).fetchone()
    if row is None:
        raise CheckpointNotFound()
    return _checkpoint(row)


def _with_files(db: sqlite3.Connection, checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with its file count and total size (a seek on the files' primary key)."""
    files, size = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM checkpoint_files WHERE checkpoint_id = ?",
        (checkpoint.id,),
    ).fetchone()
    return dataclasses.replace(checkpoint, files=int(files), size_bytes=int(size))


def _require_live_checkpoint(
    db: sqlite3.Connection, entity: str, model_id: str, checkpoint_id: str
) -> None:
    _require_live_model(db, entity, model_id)
    if canonical_uuid(checkpoint_id) is None or (
        db.execute(
            "SELECT 1 FROM checkpoints WHERE id = ? AND model_id = ?", (checkpoint_id, model_id)
        ).fetchone()
        is None
    ):
        raise CheckpointNotFound()


def _touch_blob(db: sqlite3.Connection, sha256: str, size_bytes: int) -> None:
    db.execute(
        "INSERT INTO blobs (sha256, size_bytes, touched_at) VALUES (?, ?, ?) "
        "ON CONFLICT (sha256) DO UPDATE SET touched_at = excluded.touched_at",
        (sha256, size_bytes, _now()),
    )


def _drop_files(db: sqlite3.Connection, entity: str, checkpoint_ids: list[str]) -> int:
    """Remove the files of these checkpoints; the entity's stored bytes no file of it holds any more."""
    ids = orjson.dumps(checkpoint_ids).decode()
    contents = [
        str(row[0])
        for row in db.execute(
            "SELECT DISTINCT sha256 FROM checkpoint_files "
            "WHERE checkpoint_id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
    ]
    if not contents:
        return 0
    db.execute(
        "DELETE FROM checkpoint_files WHERE checkpoint_id IN (SELECT value FROM json_each(?))",
        (ids,),
    )
    return _unreferenced_bytes(db, entity, contents)


def _unreferenced_bytes(db: sqlite3.Connection, entity: str, contents: list[str]) -> int:
    # Scoped to the entity, like `usage`: whether another entity holds the same content must not
    # show in an answer (it would tell who holds a given file).
    (freed,) = db.execute(
        "SELECT COALESCE(SUM(size_bytes), 0) FROM blobs "
        "WHERE sha256 IN (SELECT value FROM json_each(?)) AND NOT EXISTS "
        "(SELECT 1 FROM checkpoint_files f WHERE f.entity = ? AND f.sha256 = blobs.sha256)",
        (orjson.dumps(contents).decode(), entity),
    ).fetchone()
    return int(freed)


def _bytes_freed_by(db: sqlite3.Connection, entity: str, checkpoint_ids: list[str]) -> int:
    """What deleting these checkpoints would free (a dry run): `_drop_files`'s answer, unchanged."""
    (freed,) = db.execute(
        "SELECT COALESCE(SUM(size_bytes), 0) FROM (SELECT DISTINCT sha256, size_bytes "
        "FROM checkpoint_files WHERE checkpoint_id IN (SELECT value FROM json_each(:ids))) d "
        "WHERE NOT EXISTS (SELECT 1 FROM checkpoint_files f WHERE f.entity = :entity "
        "AND f.sha256 = d.sha256 AND f.checkpoint_id NOT IN (SELECT value FROM json_each(:ids)))",
        {"ids": orjson.dumps(checkpoint_ids).decode(), "entity": entity},
    ).fetchone()
    return int(freed)


def _best_steps(db: sqlite3.Connection, model_id: str, rule: BestRule, limit: int) -> list[int]:
    direction = "DESC" if rule.mode == "max" else "ASC"
    rows = db.execute(
        "SELECT step FROM checkpoint_metrics WHERE model_id = ? AND name = ? "
        f"ORDER BY value {direction}, step DESC LIMIT ?",
        (model_id, rule.metric, limit),
    ).fetchall()
    return [int(row[0]) for row in rows]


def _delete_checkpoints(
    db: sqlite3.Connection, entity: str, model_id: str, ids: list[str]
) -> tuple[list[int], int]:
    """Move the live checkpoints with these ids to the tombstones, their files gone with them; the
    steps they had and the stored bytes no live file references any more."""
    gone = db.execute(
        "SELECT step, metrics, id FROM checkpoints WHERE model_id = ? AND id IN "
        "(SELECT value FROM json_each(?))",
        (model_id, orjson.dumps(ids).decode()),
    ).fetchall()
    if not gone:
        return [], 0
    steps = [int(step) for step, _, _ in gone]
    freed = _drop_files(db, entity, [str(id_) for _, _, id_ in gone])
    params = (model_id, orjson.dumps(steps).decode())
    live = "model_id = ? AND step IN (SELECT value FROM json_each(?))"
    db.execute(
        "INSERT INTO checkpoint_tombstones (id, model_id, step, deleted_at) "
        f"SELECT id, model_id, step, ? FROM checkpoints WHERE {live}",
        (_now(), *params),
    )
    # By primary key, from the names in each checkpoint's metrics (the two change together): the
    # metric rows have no (model_id, step) index, and a scan of them all would cost O(model).
    db.executemany(
        "DELETE FROM checkpoint_metrics WHERE model_id = ? AND name = ? AND step = ?",
        [
            (model_id, name, step)
            for step, metrics, _ in gone
            for name in rules.metric_names(metrics)
        ],
    )
    db.execute(f"DELETE FROM checkpoints WHERE {live}", params)
    return steps, freed


class SQLiteStorage:
    """`Storage` on one SQLite file."""

    # Rows per transaction when a deleted model's rows are removed, and checkpoints per transaction
    # when retention deletes: each transaction holds the write lock for tens of milliseconds at most.
    delete_batch = 5000
    retention_batch = 2000
    blob_batch = 100  # blobs removed per transaction by the collector

    def __init__(self, path: Path | str, *, wal_limit_bytes: int = WAL_LIMIT_BYTES) -> None:
        self.path = Path(path)
        self.episode = Episode(logger, f"SQLite database {self.path}")
        self.writer = Writer(self.path, self.episode, wal_limit_bytes=wal_limit_bytes)
        self._db: sqlite3.Connection | None = None
        self._keys_cache: dict[str, Caller | None] = {}
        self._keys_version: int | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_stop = threading.Event()

    # Lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        self._db = self.connect(self.path)
        self.writer.start(self.connect(self.path), self.connect(self.path))
        self._checkpointer_stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=checkpoint_passively,
            args=(self.path, self._checkpointer_stop),
            name="sqlite-wal-checkpoint",
            daemon=True,
        )
        self._checkpointer.start()

    @staticmethod
    def connect(path: Path) -> sqlite3.Connection:
        if not path.exists():
            raise DatabaseUnavailable(f"database file {path} does not exist: run `ckpt db upgrade`")
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        # A WAL reader waits for no writer; this bounds the rare waits (another process recovering
        # the WAL after a crash) that would otherwise hold the event loop.
        db.execute("PRAGMA busy_timeout = 1000")
        db.execute("PRAGMA cache_size = -16000")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        return db

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer_stop.set()
            self._checkpointer.join()
            self._checkpointer = None
        self.writer.stop()
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise DatabaseUnavailable("database is not open")
        return self._db

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection; a failure the operator can fix becomes a 503, not a 500."""
        try:
            yield self.db
        except sqlite3.Error as exc:
            error = unavailable(exc)
            if error is None:
                raise
            raise error from exc

    def pool_usage(self) -> None:
        return None  # one connection per thread, no pool to wait for

    async def check(self) -> None:
        with self._reading() as db:
            db.execute("SELECT 1 FROM models LIMIT 1").fetchall()
        if self.episode.reason is not None:
            if (
                self.episode.reason == DISK_FULL
                and shutil.disk_usage(self.path.parent).free < _FREE_BYTES_TO_RECOVER
            ):
                raise DatabaseUnavailable(DISK_FULL, retry_after=30)
            # Writes are failing (a full disk, a lock held elsewhere): try one that touches the
            # file, so a health check sees the recovery even when no client writes meanwhile.
            await self.writer.run(_probe_write)
            if self.episode.reason is not None:
                raise DatabaseUnavailable(self.episode.reason)

    # Keys -----------------------------------------------------------------------------------

    async def create_key(
        self, entity: str, name: str, key_hash: str, *, read_only: bool = False
    ) -> ApiKey:
        rules.require_storable(entity, name)
        key_id, now = str(uuid.uuid4()), _now()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO api_keys (id, entity, name, key_hash, created_at, read_only) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, entity, name, key_hash, now, read_only),
            )

        await self.writer.run(write)
        self._keys_cache.clear()
        return ApiKey(key_id, entity, name, parse_timestamp(now), None, read_only)

    async def list_keys(self) -> list[ApiKey]:
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ).fetchall()
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: str) -> ApiKey:
        def write(db: sqlite3.Connection) -> ApiKey:
            db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_now(), key_id),
            )
            row = db.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise KeyNotFound(key_id)
            return _key(row)

        if not rules.storable(key_id):
            raise KeyNotFound(key_id)
        key = await self.writer.run(write)
        self._keys_cache.clear()
        return key

    async def count_keys(self) -> int:
        with self._reading() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM api_keys").fetchone()
        return int(count)

    async def caller_for_key(self, key_hash: str) -> Caller | None:
        # Keys change only through other connections (the writer thread, `ckpt keys ...`), and
        # `PRAGMA data_version` changes exactly when another connection has committed: a cached
        # answer is exact.
        with self._reading() as db:
            (version,) = db.execute("PRAGMA data_version").fetchone()
            if version != self._keys_version:
                self._keys_cache.clear()
                self._keys_version = version
            if key_hash in self._keys_cache:
                return self._keys_cache[key_hash]
            caller = None
            if rules.storable(key_hash):
                row = db.execute(
                    "SELECT entity, key_hash, read_only FROM api_keys "
                    "WHERE key_hash = ? AND revoked_at IS NULL",
                    (key_hash,),
                ).fetchone()
                if row is not None and hmac.compare_digest(row[1], key_hash):
                    caller = Caller(str(row[0]), bool(row[2]))
        if len(self._keys_cache) >= 1024:
            self._keys_cache.clear()
        self._keys_cache[key_hash] = caller
        return caller

    # Models ---------------------------------------------------------------------------------

    async def create_model(
        self,
        entity: str,
        project: str,
        name: str,
        base_model: str,
        *,
        return_existing: bool,
    ) -> tuple[Model, bool]:
        rules.require_storable(entity, project, name, base_model)

        def write(db: sqlite3.Connection) -> tuple[Model, bool]:
            existing = db.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models "
                "WHERE entity = ? AND project = ? AND name = ? AND deleted_at IS NULL",
                (entity, project, name),
            ).fetchone()
            if existing is not None:
                if return_existing:
                    return _model(existing), False
                raise ModelNameTaken(project, name)
            model = Model(str(uuid.uuid4()), entity, project, name, base_model, datetime.now(UTC))
            db.execute(
                "INSERT INTO models (id, entity, project, name, base_model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (model.id, entity, project, name, base_model, format_timestamp(model.created_at)),
            )
            return model, True

        return await self.writer.run(write, inline=True)

    async def get_model(self, entity: str, model_id: str) -> Model:
        if canonical_uuid(model_id) is None or not rules.storable(entity):
            raise ModelNotFound()
        with self._reading() as db:
            row = db.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models "
                "WHERE id = ? AND entity = ? AND deleted_at IS NULL",
                (model_id, entity),
            ).fetchone()
        if row is None:
            raise ModelNotFound()
        return _model(row)

    async def model_summary(self, entity: str, model_id: str) -> ModelSummary:
        with self._reading() as db:
            db.execute("BEGIN")  # counts of checkpoints and of files from one snapshot
            try:
                _require_live_model(db, entity, model_id)
                count, latest, updated = db.execute(
                    "SELECT COUNT(*), MAX(step), MAX(updated_at) FROM checkpoints WHERE model_id = ?",
                    (model_id,),
                ).fetchone()
                files, logical = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM checkpoint_files "
                    "WHERE model_id = ?",
                    (model_id,),
                ).fetchone()
                (stored,) = db.execute(
                    "SELECT COALESCE(SUM(size_bytes), 0) FROM (SELECT DISTINCT sha256, size_bytes "
                    "FROM checkpoint_files WHERE model_id = ?)",
                    (model_id,),
                ).fetchone()
            finally:
                db.execute("COMMIT")
        return ModelSummary(
            int(count),
            None if latest is None else int(latest),
            None if updated is None else parse_timestamp(updated),
            int(files),
            int(logical),
            int(stored),
        )

    async def get_model_by_name(self, entity: str, project: str, name: str) -> Model:
        if not rules.storable(entity, project, name):
            raise ModelNotFound()
        with self._reading() as db:
            row = db.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models "
                "WHERE entity = ? AND project = ? AND name = ? AND deleted_at IS NULL",
                (entity, project, name),
            ).fetchone()
        if row is None:
            raise ModelNotFound()
        return _model(row)

    async def list_models(
        self, entity: str, *, project: str | None, after: str | None, limit: int, order: Order
    ) -> ModelPage:
        with self._reading() as db:
            if after is None:
                position: tuple[str, str] = ("", "") if order == "asc" else ("~", "~")
            else:
                row = None
                if canonical_uuid(after) is not None and rules.storable(entity):
                    row = db.execute(
                        "SELECT created_at, id FROM models WHERE id = ? AND entity = ?",
                        (after, entity),
                    ).fetchone()
                if row is None:
                    raise InvalidCursor.for_models()
                position = (row[0], row[1])
            if not rules.storable(entity) or (project is not None and not rules.storable(project)):
                # No model has such text; and sqlite3 cannot even bind a lone surrogate.
                return ModelPage([], has_more=False)
            comparison, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
            project_filter = "AND project = ?" if project is not None else ""
            params: list[object] = [entity, *position]
            if project is not None:
                params.append(project)
            params.append(limit + 1)
            rows = db.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models "
                f"WHERE entity = ? AND (created_at, id) {comparison} (?, ?) AND deleted_at IS NULL "
                f"{project_filter} ORDER BY created_at {direction}, id {direction} LIMIT ?",
                params,
            ).fetchall()
        return ModelPage([_model(row) for row in rows[:limit]], has_more=len(rows) > limit)

    async def delete_model(self, entity: str, model_id: str) -> int:
        def mark_deleted(db: sqlite3.Connection) -> int:
            _require_live_model(db, entity, model_id)
            (count,) = db.execute(
                "SELECT COUNT(*) FROM checkpoints WHERE model_id = ?", (model_id,)
            ).fetchone()
            db.execute("UPDATE models SET deleted_at = ? WHERE id = ?", (_now(), model_id))
            return int(count)

        count = await self.writer.run(mark_deleted)
        # The model is gone for every reader from here on (every read checks it is live); its rows
        # go in bounded transactions. A process killed meanwhile leaves `purged_at` unset, and the
        # next purge (at start, periodically, `ckpt db gc`) finishes the job.
        await self._purge_model_rows(model_id)
        return count

    async def _purge_model_rows(self, model_id: str) -> None:
        for table, key in _MODEL_ROWS:

            def delete_some(db: sqlite3.Connection, table: str = table, key: str = key) -> int:
                return int(
                    db.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN "
                        f"(SELECT {key} FROM {table} WHERE model_id = ? LIMIT ?)",
                        (model_id, self.delete_batch),
                    ).rowcount
                )

            while await self.writer.run(delete_some) >= self.delete_batch:
                await asyncio.sleep(BATCH_PAUSE_SECONDS)

        def mark_purged(db: sqlite3.Connection) -> None:
            db.execute("UPDATE models SET purged_at = ? WHERE id = ?", (_now(), model_id))

        await self.writer.run(mark_purged)

    async def purge_deleted_models(self) -> int:
        with self._reading() as db:
            unpurged = [
                str(row[0])
                for row in db.execute(
                    "SELECT id FROM models WHERE deleted_at IS NOT NULL AND purged_at IS NULL"
                )
            ]
        for model_id in unpurged:
            await self._purge_model_rows(model_id)
        return len(unpurged)

    # Checkpoints ----------------------------------------------------------------------------

    def _cursor_position(
        self, db: sqlite3.Connection, model_id: str, after: str
    ) -> tuple[int, str]:
        if canonical_uuid(after) is not None:
            for table in ("checkpoints", "checkpoint_tombstones"):
                row = db.execute(
                    f"SELECT step FROM {table} WHERE id = ? AND model_id = ?", (after, model_id)
                ).fetchone()
                if row is not None:
                    return int(row[0]), after
            expired = db.execute(
                "SELECT 1 FROM expired_cursors WHERE id = ? AND model_id = ?", (after, model_id)
            ).fetchone()
            if expired is not None:
                raise CursorExpired()
        raise InvalidCursor.for_checkpoints()

    async def list_checkpoints(
        self, entity: str, model_id: str, *, after: str | None, limit: int, order: Order
    ) -> CheckpointPage:
        # sqlite3 cannot bind a lone surrogate (UnicodeEncodeError), and such text names nothing:
        # no model, and as a cursor (bound as "") one the step-by-step path below refuses.
        # `storable` costs 0.24 us for both here, a regex check of the ids twice that.
        if not rules.storable(entity, model_id):
            raise ModelNotFound()
        if after is not None:
            cursor = after if rules.storable(after) else ""
            params: tuple[object, ...] = (model_id, cursor, None, entity, limit + 1)
        else:
            params = (
                model_id,
                *(_BEFORE_FIRST if order == "asc" else _AFTER_LAST),
                entity,
                limit + 1,
            )
        with self._reading() as db:
            rows = db.execute(_ONE_STATEMENT_PAGE[order, after is not None], params).fetchall()
            if not rows:
                _require_live_model(db, entity, model_id)
                if after is not None:
                    step, id_ = self._cursor_position(db, model_id, after)
                else:
                    step, id_ = _BEFORE_FIRST if order == "asc" else _AFTER_LAST
                rows = db.execute(
                    _PAGE_ASC if order == "asc" else _PAGE_DESC, (model_id, step, id_, limit + 1)
                ).fetchall()
        has_more = len(rows) > limit
        if has_more:
            rows.pop()
        return CheckpointPage(rows, has_more)

    async def register_checkpoint(
        self, entity: str, model_id: str, step: int, metrics: dict[str, float]
    ) -> tuple[Checkpoint, bool]:
        rules.require_storable(*metrics)
        metrics_json = encode_metrics(metrics)

        def write(db: sqlite3.Connection) -> tuple[Checkpoint, bool]:
            _require_live_model(db, entity, model_id)
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE model_id = ? AND step = ?",
                (model_id, step),
            ).fetchone()
            if row is not None:
                existing = _checkpoint(row)
                rules.check_repeat_registration(step, existing.metrics_json, metrics)
                return _with_files(db, existing), False
            now = _now()
            checkpoint = Checkpoint(
                str(uuid.uuid4()), step, metrics_json, parse_timestamp(now), parse_timestamp(now)
            )
            db.execute(
                "INSERT INTO checkpoints (model_id, step, id, metrics, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (model_id, step, checkpoint.id, metrics_json, now, now),
            )
            db.executemany(
                "INSERT INTO checkpoint_metrics (model_id, name, step, value) VALUES (?, ?, ?, ?)",
                [(model_id, name, step, value) for name, value in metrics.items()],
            )
            return checkpoint, True

        return await self.writer.run(write, inline=True)

    async def get_checkpoint(self, entity: str, model_id: str, checkpoint_id: str) -> Checkpoint:
        with self._reading() as db:
            _require_live_model(db, entity, model_id)
            return _with_files(db, _checkpoint_by_id(db, model_id, checkpoint_id))

    async def get_checkpoint_at_step(self, entity: str, model_id: str, step: int) -> Checkpoint:
        with self._reading() as db:
            _require_live_model(db, entity, model_id)
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE model_id = ? AND step = ?",
                (model_id, step),
            ).fetchone()
            if row is None:
                raise CheckpointNotFound()
            return _with_files(db, _checkpoint(row))

    async def update_metrics(
        self, entity: str, model_id: str, checkpoint_id: str, metrics: dict[str, float]
    ) -> Checkpoint:
        rules.require_storable(*metrics)

        def write(db: sqlite3.Connection) -> Checkpoint:
            _require_live_model(db, entity, model_id)
            current = _checkpoint_by_id(db, model_id, checkpoint_id)
            merged = rules.merge_metrics(current.metrics_json, metrics)
            now = _now()
            db.execute(
                "UPDATE checkpoints SET metrics = ?, updated_at = ? WHERE model_id = ? AND step = ?",
                (merged, now, model_id, current.step),
            )
            db.executemany(
                "INSERT OR REPLACE INTO checkpoint_metrics (model_id, name, step, value) "
                "VALUES (?, ?, ?, ?)",
                [(model_id, name, current.step, value) for name, value in metrics.items()],
            )
            return _with_files(
                db,
                Checkpoint(
                    current.id, current.step, merged, current.created_at, parse_timestamp(now)
                ),
            )

        return await self.writer.run(write, inline=True)

    async def delete_checkpoints(
        self, entity: str, model_id: str, steps: list[int]
    ) -> DeleteResult:
        requested = rules.unique_steps(steps)
        candidates = orjson.dumps(rules.possible_steps(requested)).decode()

        def write(db: sqlite3.Connection) -> set[int]:
            _require_live_model(db, entity, model_id)
            ids = [
                str(row[0])
                for row in db.execute(
                    "SELECT id FROM checkpoints "
                    "WHERE model_id = ? AND step IN (SELECT value FROM json_each(?))",
                    (model_id, candidates),
                )
            ]
            return set(_delete_checkpoints(db, entity, model_id, ids)[0])

        deleted = await self.writer.run(write)
        return DeleteResult(len(deleted), rules.not_found_steps(requested, deleted))

    async def list_deleted_steps(
        self, entity: str, model_id: str, *, after_step: int | None, limit: int
    ) -> DeletedStepPage:
        with self._reading() as db:
            _require_live_model(db, entity, model_id)
            rows = db.execute(
                "SELECT t.step, MAX(t.deleted_at) FROM checkpoint_tombstones AS t "
                "WHERE t.model_id = ? AND t.step > ? AND NOT EXISTS "
                "(SELECT 1 FROM checkpoints AS c WHERE c.model_id = t.model_id AND c.step = t.step) "
                "GROUP BY t.step ORDER BY t.step LIMIT ?",
                (model_id, -1 if after_step is None else after_step, limit + 1),
            ).fetchall()
        return rules.deleted_step_page([(step, parse_timestamp(at)) for step, at in rows], limit)

    async def best_checkpoint(
        self, entity: str, model_id: str, metric: str, mode: Mode
    ) -> Checkpoint:
        with self._reading() as db:
            _require_live_model(db, entity, model_id)
            best = (
                _best_steps(db, model_id, BestRule(metric, mode, 1), 1)
                if rules.storable(metric)
                else []
            )
            if not best:
                raise MetricNotFound(metric)
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE model_id = ? AND step = ?",
                (model_id, best[0]),
            ).fetchone()
            return _with_files(db, _checkpoint(row))

    async def apply_retention(
        self,
        entity: str,
        model_id: str,
        *,
        keep_latest: int,
        keep_best: BestRule | None,
        dry_run: bool,
    ) -> RetentionResult:
        def plan(db: sqlite3.Connection) -> rules.RetentionPlan:
            _require_live_model(db, entity, model_id)
            live = [
                (int(step), str(id_))
                for step, id_ in db.execute(
                    "SELECT step, id FROM checkpoints WHERE model_id = ? ORDER BY step", (model_id,)
                )
            ]
            best = (
                _best_steps(db, model_id, keep_best, keep_best.k)
                if keep_best is not None and rules.ranks_best(keep_best)
                else []
            )
            return rules.plan_retention(live, keep_latest, best)

        if dry_run:
            with self._reading() as db:
                db.execute("BEGIN")  # the plan and its bytes from one snapshot
                try:
                    decided = plan(db)
                    freed = _bytes_freed_by(db, entity, [id_ for _, id_ in decided.deleted])
                finally:
                    db.execute("COMMIT")
            return RetentionResult(decided.kept_steps, [step for step, _ in decided.deleted], freed)
        decided = await self.writer.run(plan)
        # Deleted in bounded transactions, by id: a checkpoint registered meanwhile (even at a
        # step that was just deleted) is never in the plan, and a step someone else deleted
        # meanwhile is not reported as deleted by this run.
        deleted: list[int] = []
        freed = 0
        for start in range(0, len(decided.deleted), self.retention_batch):
            ids = [id_ for _, id_ in decided.deleted[start : start + self.retention_batch]]

            def delete_batch(db: sqlite3.Connection, ids: list[str] = ids) -> tuple[list[int], int]:
                _require_live_model(db, entity, model_id)
                return _delete_checkpoints(db, entity, model_id, ids)

            steps, freed_now = await self.writer.run(delete_batch)
            deleted.extend(steps)
            freed += freed_now
            await asyncio.sleep(BATCH_PAUSE_SECONDS)
        return RetentionResult(decided.kept_steps, sorted(deleted), freed)

    async def metric_series(
        self,
        entity: str,
        model_id: str,
        metric: str,
        *,
        points: int,
        step_min: int,
        step_max: int,
    ) -> MetricSeries:
        with self._reading() as db:
            _require_live_model(db, entity, model_id)
        if not rules.storable(metric):
            return MetricSeries(0, [])

        # 100,000 rows take ~40 ms to read, which the event loop would otherwise wait for.
        rows: list[tuple[int, float]] = await self._read_apart(
            "SELECT step, value FROM checkpoint_metrics "
            "WHERE model_id = ? AND name = ? AND step BETWEEN ? AND ? ORDER BY step",
            (model_id, metric, step_min, step_max),
        )
        return MetricSeries(len(rows), rules.downsample_series(rows, points))

    async def _read_apart(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        """The rows of a read that may take longer than a keyset page, on a thread with its own
        connection: the event loop (and every other request) does not wait for it."""

        def read() -> list[Any]:
            db = self.connect(self.path)
            try:
                return db.execute(sql, parameters).fetchall()
            finally:
                db.close()

        try:
            return await asyncio.to_thread(read)
        except sqlite3.Error as exc:
            error = unavailable(exc)
            if error is None:
                raise
            raise error from exc

    async def list_metric_names(
        self, entity: str, model_id: str, *, after: str | None, limit: int
    ) -> MetricNamePage:
        if after is not None:
            rules.require_storable(after)
        with self._reading() as db:
            _require_live_model(db, entity, model_id)
        # A few names take microseconds, but a model may have thousands (10,000 took ~90 ms).
        rows = await self._read_apart(_METRIC_NAMES, (model_id, after or "", limit))
        return rules.metric_name_page([str(row[0]) for row in rows], limit)

    async def purge_tombstones(self, older_than: datetime) -> int:
        cutoff, now = format_timestamp(older_than), _now()

        def write(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT OR REPLACE INTO expired_cursors (id, model_id, purged_at) "
                "SELECT id, model_id, ? FROM checkpoint_tombstones WHERE deleted_at < ?",
                (now, cutoff),
            )
            return int(
                db.execute(
                    "DELETE FROM checkpoint_tombstones WHERE deleted_at < ?", (cutoff,)
                ).rowcount
            )

        return await self.writer.run(write)

    # Files ----------------------------------------------------------------------------------

    async def require_checkpoint(self, entity: str, model_id: str, checkpoint_id: str) -> None:
        with self._reading() as db:
            _require_live_checkpoint(db, entity, model_id, checkpoint_id)

    async def touch_blob(self, sha256: str, size_bytes: int) -> None:
        await self.writer.run(lambda db: _touch_blob(db, sha256, size_bytes), inline=True)

    async def attach_file(
        self,
        entity: str,
        model_id: str,
        checkpoint_id: str,
        path: str,
        sha256: str,
        size_bytes: int,
    ) -> tuple[FileRecord, bool]:
        def write(db: sqlite3.Connection) -> tuple[FileRecord, bool]:
            _require_live_checkpoint(db, entity, model_id, checkpoint_id)
            row = db.execute(
                "SELECT sha256, size_bytes FROM checkpoint_files "
                "WHERE checkpoint_id = ? AND path = ?",
                (checkpoint_id, path),
            ).fetchone()
            if row is not None:
                if row[0] != sha256:
                    raise FileConflict()
                return FileRecord(path, sha256, int(row[1])), False
            _touch_blob(db, sha256, size_bytes)
            db.execute(
                "INSERT INTO checkpoint_files "
                "(checkpoint_id, path, model_id, entity, sha256, size_bytes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (checkpoint_id, path, model_id, entity, sha256, size_bytes, _now()),
            )
            return FileRecord(path, sha256, size_bytes), True

        return await self.writer.run(write, inline=True)

    async def get_file(
        self, entity: str, model_id: str, checkpoint_id: str, path: str
    ) -> FileRecord:
        with self._reading() as db:
            _require_live_checkpoint(db, entity, model_id, checkpoint_id)
            row = db.execute(
                "SELECT sha256, size_bytes FROM checkpoint_files "
                "WHERE checkpoint_id = ? AND path = ?",
                (checkpoint_id, path),
            ).fetchone()
        if row is None:
            raise FileNotFound()
        return FileRecord(path, str(row[0]), int(row[1]))

    async def list_files(
        self, entity: str, model_id: str, checkpoint_id: str, *, after: str | None, limit: int
    ) -> FilePage:
        with self._reading() as db:
            _require_live_checkpoint(db, entity, model_id, checkpoint_id)
            rows = db.execute(
                "SELECT path, sha256, size_bytes FROM checkpoint_files "
                "WHERE checkpoint_id = ? AND path > ? ORDER BY path LIMIT ?",
                (checkpoint_id, after if after is not None else "", limit + 1),
            ).fetchall()
        files = [FileRecord(str(path), str(sha), int(size)) for path, sha, size in rows]
        return FilePage(files[:limit], has_more=len(files) > limit)

    async def delete_file(self, entity: str, model_id: str, checkpoint_id: str, path: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            _require_live_checkpoint(db, entity, model_id, checkpoint_id)
            deleted = db.execute(
                "DELETE FROM checkpoint_files WHERE checkpoint_id = ? AND path = ?",
                (checkpoint_id, path),
            ).rowcount
            if not deleted:
                raise FileNotFound()

        await self.writer.run(write)

    async def held_contents(self, entity: str, sha256s: list[str]) -> dict[str, int]:
        if not rules.storable(entity):
            return {}
        with self._reading() as db:
            rows = db.execute(
                "SELECT DISTINCT sha256, size_bytes FROM checkpoint_files "
                "WHERE entity = ? AND sha256 IN (SELECT value FROM json_each(?))",
                (entity, orjson.dumps(sha256s).decode()),
            ).fetchall()
        return {str(sha): int(size) for sha, size in rows}

    async def usage(self, entity: str) -> Usage:
        with self._reading() as db:
            (checkpoints,) = db.execute(
                "SELECT COUNT(*) FROM checkpoints c JOIN models m ON m.id = c.model_id "
                "WHERE m.entity = ? AND m.deleted_at IS NULL",
                (entity,),
            ).fetchone()
            files, logical = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(f.size_bytes), 0) FROM checkpoint_files f "
                "JOIN models m ON m.id = f.model_id WHERE f.entity = ? AND m.deleted_at IS NULL",
                (entity,),
            ).fetchone()
            (stored,) = db.execute(
                "SELECT COALESCE(SUM(size_bytes), 0) FROM (SELECT DISTINCT f.sha256, f.size_bytes "
                "FROM checkpoint_files f JOIN models m ON m.id = f.model_id "
                "WHERE f.entity = ? AND m.deleted_at IS NULL)",
                (entity,),
            ).fetchone()
        return Usage(entity, int(checkpoints), int(files), int(logical), int(stored))

    async def collect_blobs(
        self, older_than: datetime, remove: Callable[[str], Coroutine[Any, Any, None]]
    ) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        cutoff = format_timestamp(older_than)

        def collect_some(db: sqlite3.Connection) -> tuple[int, int]:
            rows = db.execute(
                "SELECT sha256, size_bytes FROM blobs WHERE touched_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM checkpoint_files f WHERE f.sha256 = blobs.sha256) LIMIT ?",
                (cutoff, self.blob_batch),
            ).fetchall()
            for sha256, _ in rows:
                # The object goes while this transaction holds the write lock: no upload can touch
                # the row (and then rely on the object) in between. The removal itself runs on the
                # event loop; this thread waits for it.
                asyncio.run_coroutine_threadsafe(remove(str(sha256)), loop).result()
                db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
            return len(rows), sum(int(size) for _, size in rows)

        count = freed = 0
        while True:
            removed, size = await self.writer.run(collect_some)
            count, freed = count + removed, freed + size
            if removed < self.blob_batch:
                return count, freed

    async def create_upload(
        self, entity: str, model_id: str, checkpoint_id: str, path: str, upload_id: str
    ) -> UploadSession:
        upload = UploadSession(upload_id, entity, model_id, checkpoint_id, path)

        def write(db: sqlite3.Connection) -> None:
            _require_live_checkpoint(db, entity, model_id, checkpoint_id)
            db.execute(
                "INSERT INTO uploads "
                "(id, entity, model_id, checkpoint_id, path, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (upload.id, entity, model_id, checkpoint_id, path, _now()),
            )

        await self.writer.run(write)
        return upload

    async def get_upload(self, entity: str, upload_id: str) -> UploadSession:
        if canonical_uuid(upload_id) is None:
            raise UploadNotFound()
        with self._reading() as db:
            row = db.execute(
                "SELECT u.model_id, u.checkpoint_id, u.path FROM uploads u "
                "JOIN models m ON m.id = u.model_id "
                "WHERE u.id = ? AND u.entity = ? AND m.deleted_at IS NULL",
                (upload_id, entity),
            ).fetchone()
        if row is None:
            raise UploadNotFound()
        return UploadSession(upload_id, entity, str(row[0]), str(row[1]), str(row[2]))

    async def end_upload(self, upload_id: str) -> None:
        await self.writer.run(
            lambda db: db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        )

    async def expire_uploads(self, older_than: datetime) -> list[str]:
        cutoff = format_timestamp(older_than)

        def write(db: sqlite3.Connection) -> list[str]:
            ids = [
                str(row[0])
                for row in db.execute("SELECT id FROM uploads WHERE created_at < ?", (cutoff,))
            ]
            db.execute("DELETE FROM uploads WHERE created_at < ?", (cutoff,))
            return ids

        return await self.writer.run(write)


def _probe_write(db: sqlite3.Connection) -> None:
    """A write that changes nothing but still appends a page to the WAL (so needs disk space)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    db.execute(f"PRAGMA user_version = {int(version)}")
