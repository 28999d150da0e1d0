"""The SQLite backend: one connection used from the event loop, WAL mode, one writer at a time.

Every method runs to completion without awaiting, so within a process the calls are atomic with respect
to each other; `BEGIN IMMEDIATE` serialises writers across processes. Reads on the event loop cost tens
of microseconds and scale with server processes (SQLite reads do not scale with threads here).
`synchronous=NORMAL` in WAL mode keeps every committed write across a crash of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson

from .base import (
    ApiKey,
    BestRule,
    Checkpoint,
    CheckpointPage,
    DeleteResult,
    Mode,
    Model,
    ModelPage,
    Order,
    RetentionResult,
    canonical_uuid,
    encode_metrics,
)
from .errors import (
    MAX_METRICS,
    CheckpointNotFound,
    CursorExpired,
    DatabaseUnavailable,
    InvalidCursor,
    KeyNotFound,
    MetricNotFound,
    ModelNameTaken,
    ModelNotFound,
    StepConflict,
    TooManyMetrics,
)

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
    ("checkpoints", "model_id, step, id"),
    ("checkpoint_metrics", "model_id, name, step"),
    ("checkpoint_tombstones", "id"),
    ("expired_cursors", "id"),
)
# Below/above every real (step, id): steps are >= 0 and ids are 36-character strings.
_BEFORE_FIRST = (-1, "")
_AFTER_LAST = (2**63 - 1, "~")

_CHECKPOINT_COLUMNS = "id, step, metrics, created_at, updated_at"


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a Z: sorts as text in time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def _model(row: sqlite3.Row | tuple[str, ...]) -> Model:
    id_, entity, project, name, base_model, created_at = row
    return Model(id_, entity, project, name, base_model, parse_timestamp(created_at))


def _checkpoint(row: tuple[str, int, str, str, str]) -> Checkpoint:
    id_, step, metrics, created_at, updated_at = row
    return Checkpoint(id_, step, metrics, parse_timestamp(created_at), parse_timestamp(updated_at))


def _key(row: tuple[str, str, str, str, str | None]) -> ApiKey:
    id_, entity, name, created_at, revoked_at = row
    return ApiKey(
        id_,
        entity,
        name,
        parse_timestamp(created_at),
        parse_timestamp(revoked_at) if revoked_at else None,
    )


class SQLiteStorage:
    """`Storage` on one SQLite file."""

    delete_batch = 5000  # rows per transaction when a model's rows are deleted

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._keys_cache: dict[str, str | None] = {}
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_stop = threading.Event()
        self._keys_version: int | None = None

    # Lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        self._db = self.connect(self.path)
        # Copying the WAL back into the database (with an fsync) is done by a thread with its own
        # connection, not by whichever request's COMMIT crosses the auto-checkpoint threshold: the
        # event loop never waits for it, and SQLite releases the GIL while it does the I/O.
        self._db.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer_stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_wal, name="sqlite-wal-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_wal(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            while not self._checkpointer_stop.wait(0.25):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            db.close()

    @staticmethod
    def connect(path: Path) -> sqlite3.Connection:
        if not path.exists():
            raise DatabaseUnavailable(f"database file {path} does not exist: run `ckpt db upgrade`")
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA cache_size = -16000")
        return db

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer_stop.set()
            self._checkpointer.join()
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise DatabaseUnavailable("database is not open")
        return self._db

    async def check(self) -> None:
        try:
            self.db.execute("SELECT 1 FROM models LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _live_model(self, entity: str, model_id: str) -> None:
        if canonical_uuid(model_id) is None:
            raise ModelNotFound()
        row = self.db.execute(
            "SELECT 1 FROM models WHERE id = ? AND entity = ? AND deleted_at IS NULL",
            (model_id, entity),
        ).fetchone()
        if row is None:
            raise ModelNotFound()

    # Keys -----------------------------------------------------------------------------------

    async def create_key(self, entity: str, name: str, key_hash: str) -> ApiKey:
        key_id, now = str(uuid.uuid4()), _now()
        self._keys_cache.clear()
        with self._write() as db:
            db.execute(
                "INSERT INTO api_keys (id, entity, name, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, entity, name, key_hash, now),
            )
        return ApiKey(key_id, entity, name, parse_timestamp(now), None)

    async def list_keys(self) -> list[ApiKey]:
        rows = self.db.execute(
            "SELECT id, entity, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
        ).fetchall()
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: str) -> ApiKey:
        self._keys_cache.clear()
        with self._write() as db:
            db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_now(), key_id),
            )
            row = db.execute(
                "SELECT id, entity, name, created_at, revoked_at FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None:
            raise KeyNotFound(f"no key with id {key_id!r}")
        return _key(row)

    async def count_keys(self) -> int:
        (count,) = self.db.execute("SELECT COUNT(*) FROM api_keys").fetchone()
        return int(count)

    async def entity_for_key(self, key_hash: str) -> str | None:
        # Keys change only through other connections (`ckpt keys ...`), and `PRAGMA data_version`
        # changes exactly when another connection has committed: a cached answer is exact.
        (version,) = self.db.execute("PRAGMA data_version").fetchone()
        if version != self._keys_version:
            self._keys_cache.clear()
            self._keys_version = version
        if key_hash in self._keys_cache:
            return self._keys_cache[key_hash]
        entity = self._entity_for_key(key_hash)
        if len(self._keys_cache) >= 1024:
            self._keys_cache.clear()
        self._keys_cache[key_hash] = entity
        return entity

    def _entity_for_key(self, key_hash: str) -> str | None:
        row = self.db.execute(
            "SELECT entity, key_hash FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
            (key_hash,),
        ).fetchone()
        if row is None or not hmac.compare_digest(row[1], key_hash):
            return None
        return str(row[0])

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
        with self._write() as db:
            existing = db.execute(
                "SELECT id, entity, project, name, base_model, created_at FROM models "
                "WHERE entity = ? AND project = ? AND name = ? AND deleted_at IS NULL",
                (entity, project, name),
            ).fetchone()
            if existing is not None:
                if return_existing:
                    return _model(existing), False
                raise ModelNameTaken(
                    f"A model named {name!r} already exists in project {project!r}"
                )
            model = Model(str(uuid.uuid4()), entity, project, name, base_model, datetime.now(UTC))
            db.execute(
                "INSERT INTO models (id, entity, project, name, base_model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (model.id, entity, project, name, base_model, format_timestamp(model.created_at)),
            )
        return model, True

    async def get_model(self, entity: str, model_id: str) -> Model:
        if canonical_uuid(model_id) is None:
            raise ModelNotFound()
        row = self.db.execute(
            "SELECT id, entity, project, name, base_model, created_at FROM models "
            "WHERE id = ? AND entity = ? AND deleted_at IS NULL",
            (model_id, entity),
        ).fetchone()
        if row is None:
            raise ModelNotFound()
        return _model(row)

    async def list_models(
        self, entity: str, *, project: str | None, after: str | None, limit: int, order: Order
    ) -> ModelPage:
        if after is None:
            position: tuple[str, str] = ("", "") if order == "asc" else ("~", "~")
        else:
            row = None
            if canonical_uuid(after) is not None:
                row = self.db.execute(
                    "SELECT created_at, id FROM models WHERE id = ? AND entity = ?", (after, entity)
                ).fetchone()
            if row is None:
                raise InvalidCursor("after is not the id of a model in this list")
            position = (row[0], row[1])
        comparison, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        project_filter = "AND project = ?" if project is not None else ""
        params: list[object] = [entity, *position]
        if project is not None:
            params.append(project)
        params.append(limit + 1)
        rows = self.db.execute(
            "SELECT id, entity, project, name, base_model, created_at FROM models "
            f"WHERE entity = ? AND (created_at, id) {comparison} (?, ?) AND deleted_at IS NULL "
            f"{project_filter} ORDER BY created_at {direction}, id {direction} LIMIT ?",
            params,
        ).fetchall()
        return ModelPage([_model(row) for row in rows[:limit]], has_more=len(rows) > limit)

    async def delete_model(self, entity: str, model_id: str) -> int:
        with self._write() as db:
            self._live_model(entity, model_id)
            (count,) = db.execute(
                "SELECT COUNT(*) FROM checkpoints WHERE model_id = ?", (model_id,)
            ).fetchone()
            db.execute("UPDATE models SET deleted_at = ? WHERE id = ?", (_now(), model_id))
        # The model is gone for every reader from here on (every read checks it is live). Its rows go
        # in batches, yielding to the event loop in between: a model with 1M checkpoints took ~6 s to
        # delete in one transaction, and the whole server waited for it.
        for table, key in _MODEL_ROWS:
            while True:
                with self._write() as db:
                    deleted = db.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN "
                        f"(SELECT {key} FROM {table} WHERE model_id = ? LIMIT ?)",
                        (model_id, self.delete_batch),
                    ).rowcount
                if deleted < self.delete_batch:
                    break
                await asyncio.sleep(0)
        return int(count)

    # Checkpoints ----------------------------------------------------------------------------

    def _cursor_position(self, model_id: str, after: str) -> tuple[int, str]:
        if canonical_uuid(after) is not None:
            db = self.db
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
                raise CursorExpired(
                    "after names a checkpoint deleted so long ago that its position was purged: "
                    "the cursor expired, start the walk again"
                )
        raise InvalidCursor("after is not the id of a checkpoint of this model")

    async def list_checkpoints(
        self, entity: str, model_id: str, *, after: str | None, limit: int, order: Order
    ) -> CheckpointPage:
        if after is not None:
            params: tuple[object, ...] = (model_id, after, None, entity, limit + 1)
        else:
            params = (
                model_id,
                *(_BEFORE_FIRST if order == "asc" else _AFTER_LAST),
                entity,
                limit + 1,
            )
        rows = self.db.execute(_ONE_STATEMENT_PAGE[order, after is not None], params).fetchall()
        if rows:
            has_more = len(rows) > limit
            if has_more:
                rows.pop()
            return CheckpointPage(rows, has_more)
        self._live_model(entity, model_id)
        if after is not None:
            step, id_ = self._cursor_position(model_id, after)
        else:
            step, id_ = _BEFORE_FIRST if order == "asc" else _AFTER_LAST
        rows = self.db.execute(
            _PAGE_ASC if order == "asc" else _PAGE_DESC, (model_id, step, id_, limit + 1)
        ).fetchall()
        has_more = len(rows) > limit
        if has_more:
            rows.pop()
        return CheckpointPage(rows, has_more)

    async def register_checkpoint(
        self, entity: str, model_id: str, step: int, metrics: dict[str, float]
    ) -> tuple[Checkpoint, bool]:
        with self._write() as db:
            self._live_model(entity, model_id)
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE model_id = ? AND step = ?",
                (model_id, step),
            ).fetchone()
            if row is not None:
                existing = _checkpoint(row)
                if orjson.loads(existing.metrics_json) != metrics:
                    raise StepConflict(
                        f"Step {step} already has a checkpoint with different metrics"
                    )
                return existing, False
            now = _now()
            checkpoint = Checkpoint(
                str(uuid.uuid4()),
                step,
                encode_metrics(metrics),
                parse_timestamp(now),
                parse_timestamp(now),
            )
            db.execute(
                "INSERT INTO checkpoints (model_id, step, id, metrics, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (model_id, step, checkpoint.id, checkpoint.metrics_json, now, now),
            )
            db.executemany(
                "INSERT INTO checkpoint_metrics (model_id, name, step, value) VALUES (?, ?, ?, ?)",
                [(model_id, name, step, value) for name, value in metrics.items()],
            )
        return checkpoint, True

    def _checkpoint_by_id(self, model_id: str, checkpoint_id: str) -> Checkpoint:
        if canonical_uuid(checkpoint_id) is None:
            raise CheckpointNotFound()
        row = self.db.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = ? AND model_id = ?",
            (checkpoint_id, model_id),
        ).fetchone()
        if row is None:
            raise CheckpointNotFound()
        return _checkpoint(row)

    async def get_checkpoint(self, entity: str, model_id: str, checkpoint_id: str) -> Checkpoint:
        self._live_model(entity, model_id)
        return self._checkpoint_by_id(model_id, checkpoint_id)

    async def update_metrics(
        self, entity: str, model_id: str, checkpoint_id: str, metrics: dict[str, float]
    ) -> Checkpoint:
        with self._write() as db:
            self._live_model(entity, model_id)
            current = self._checkpoint_by_id(model_id, checkpoint_id)
            merged = orjson.loads(current.metrics_json) | metrics
            if len(merged) > MAX_METRICS:
                raise TooManyMetrics(
                    f"the merge would leave the checkpoint with {len(merged)} metrics; "
                    f"at most {MAX_METRICS} are allowed"
                )
            now = _now()
            db.execute(
                "UPDATE checkpoints SET metrics = ?, updated_at = ? WHERE model_id = ? AND step = ?",
                (encode_metrics(merged), now, model_id, current.step),
            )
            db.executemany(
                "INSERT OR REPLACE INTO checkpoint_metrics (model_id, name, step, value) "
                "VALUES (?, ?, ?, ?)",
                [(model_id, name, current.step, value) for name, value in metrics.items()],
            )
        return Checkpoint(
            current.id,
            current.step,
            encode_metrics(merged),
            current.created_at,
            parse_timestamp(now),
        )

    def _delete_steps(self, db: sqlite3.Connection, model_id: str, steps: list[int]) -> None:
        """Move the live checkpoints at `steps` (all known to exist) to the tombstones."""
        params = (model_id, orjson.dumps(steps).decode())
        live = "model_id = ? AND step IN (SELECT value FROM json_each(?))"
        db.execute(
            "INSERT INTO checkpoint_tombstones (id, model_id, step, deleted_at) "
            f"SELECT id, model_id, step, ? FROM checkpoints WHERE {live}",
            (_now(), *params),
        )
        # By primary key, from the names in each checkpoint's metrics JSON (the two change together):
        # the metric rows have no (model_id, step) index, and a scan of them all would cost O(model).
        db.execute(
            "DELETE FROM checkpoint_metrics WHERE (model_id, name, step) IN ("
            "SELECT checkpoints.model_id, metric.key, checkpoints.step "
            f"FROM checkpoints, json_each(checkpoints.metrics) AS metric WHERE {live})",
            params,
        )
        db.execute(f"DELETE FROM checkpoints WHERE {live}", params)

    async def delete_checkpoints(
        self, entity: str, model_id: str, steps: list[int]
    ) -> DeleteResult:
        requested = list(dict.fromkeys(steps))
        with self._write() as db:
            self._live_model(entity, model_id)
            found = {
                row[0]
                for row in db.execute(
                    "SELECT step FROM checkpoints "
                    "WHERE model_id = ? AND step IN (SELECT value FROM json_each(?))",
                    (model_id, orjson.dumps(requested).decode()),
                )
            }
            self._delete_steps(db, model_id, sorted(found))
        return DeleteResult(len(found), [step for step in requested if step not in found])

    def _best_steps(self, model_id: str, rule: BestRule, limit: int) -> list[int]:
        direction = "DESC" if rule.mode == "max" else "ASC"
        rows = self.db.execute(
            "SELECT step FROM checkpoint_metrics WHERE model_id = ? AND name = ? "
            f"ORDER BY value {direction}, step DESC LIMIT ?",
            (model_id, rule.metric, limit),
        ).fetchall()
        return [int(row[0]) for row in rows]

    async def best_checkpoint(
        self, entity: str, model_id: str, metric: str, mode: Mode
    ) -> Checkpoint:
        self._live_model(entity, model_id)
        best = self._best_steps(model_id, BestRule(metric, mode, 1), 1)
        if not best:
            raise MetricNotFound(f"No checkpoint of this model has the metric {metric!r}")
        row = self.db.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE model_id = ? AND step = ?",
            (model_id, best[0]),
        ).fetchone()
        return _checkpoint(row)

    async def apply_retention(
        self,
        entity: str,
        model_id: str,
        *,
        keep_latest: int,
        keep_best: BestRule | None,
        dry_run: bool,
    ) -> RetentionResult:
        with self._write() as db:
            self._live_model(entity, model_id)
            steps = [
                int(row[0])
                for row in db.execute(
                    "SELECT step FROM checkpoints WHERE model_id = ? ORDER BY step", (model_id,)
                )
            ]
            keep = set(steps[-max(keep_latest, 1) :]) if steps else set()
            if keep_best is not None and keep_best.k > 0:
                keep.update(self._best_steps(model_id, keep_best, keep_best.k))
            deleted = [step for step in steps if step not in keep]
            if not dry_run:
                self._delete_steps(db, model_id, deleted)
        return RetentionResult(sorted(keep), deleted)

    async def purge_tombstones(self, older_than: datetime) -> int:
        cutoff, now = format_timestamp(older_than), _now()
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO expired_cursors (id, model_id, purged_at) "
                "SELECT id, model_id, ? FROM checkpoint_tombstones WHERE deleted_at < ?",
                (now, cutoff),
            )
            purged = db.execute(
                "DELETE FROM checkpoint_tombstones WHERE deleted_at < ?", (cutoff,)
            ).rowcount
        return int(purged)
