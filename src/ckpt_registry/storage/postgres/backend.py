"""The PostgreSQL backend: one transaction per write, unique indexes decide races, rows locked in step
order. The rules are `rules.py`'s; this module turns each request into SQL (`queries.py`) run on the
pool (`pool.py`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from .. import rules
from ..base import (
    ApiKey,
    BestRule,
    Caller,
    Checkpoint,
    CheckpointPage,
    CheckpointRow,
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
    PoolUsage,
    RetentionResult,
    UploadSession,
    Usage,
    canonical_uuid,
    encode_metrics,
)
from ..errors import (
    CheckpointNotFound,
    CursorExpired,
    FileConflict,
    FileNotFound,
    InvalidCursor,
    KeyNotFound,
    MetricNotFound,
    ModelNameTaken,
    ModelNotFound,
    UploadNotFound,
)
from ..urls import postgres_dsn
from .keys import KEYS_CHANNEL, KeyCache
from .pool import Connection, Pool
from .queries import (
    BEST_ONE,
    BEST_STEPS,
    CHECKPOINT_COLUMNS,
    CHECKPOINT_DETAIL,
    DELETE_METRICS,
    DELETE_STEPS,
    DELETED_STEPS,
    DROP_FILES,
    FREED_BY,
    KEY_COLUMNS,
    LIVE_CHECKPOINT,
    LIVE_MODEL,
    LIVE_STEPS,
    LOCK_ALL_STEPS,
    LOCK_STEPS,
    METRIC_NAMES,
    METRIC_SERIES,
    MODEL_COLUMNS,
    MODEL_SUMMARY,
    PAGE_QUERIES,
    TOUCH_BLOB,
    UPSERT_METRICS,
    file_totals,
)


def _model(row: Any) -> Model:
    return Model(
        str(row["id"]),
        row["entity"],
        row["project"],
        row["name"],
        row["base_model"],
        row["created_at"],
    )


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        str(row["id"]),
        int(row["step"]),
        row["metrics"],
        row["created_at"],
        row["updated_at"],
        int(row.get("files", 0)),
        int(row.get("size_bytes", 0)),
    )


def _key(row: Any) -> ApiKey:
    return ApiKey(
        str(row["id"]),
        row["entity"],
        row["name"],
        row["created_at"],
        row["revoked_at"],
        row["read_only"],
    )


def _known_model(entity: str, model_id: str) -> None:
    """A model id or entity that cannot be stored names no model: never send it to PostgreSQL."""
    if canonical_uuid(model_id) is None or not rules.storable(entity):
        raise ModelNotFound()


async def _lock_live_model(connection: Connection, entity: str, model_id: str) -> None:
    # FOR SHARE: a concurrent delete_model (FOR UPDATE) waits for this transaction, and vice versa.
    if await connection.fetchval(LIVE_MODEL + " FOR SHARE", model_id, entity) is None:
        raise ModelNotFound()


async def _delete_steps(
    connection: Connection, entity: str, model_id: str, steps: list[int]
) -> tuple[set[int], int]:
    """Delete the checkpoints at `steps` (rows already locked), leaving tombstones, their files gone
    with them; the steps gone and the entity's stored bytes no file of it holds any more."""
    rows = await connection.fetch(DELETE_STEPS, model_id, steps)
    metric_steps: list[int] = []
    metric_names: list[str] = []
    for row in rows:
        for name in rules.metric_names(row["metrics"]):
            metric_steps.append(row["step"])
            metric_names.append(name)
    if metric_names:
        await connection.execute(DELETE_METRICS, model_id, metric_steps, metric_names)
    freed = 0
    if rows:
        ids = [str(row["id"]) for row in rows]
        freed = int(await connection.fetchval(DROP_FILES, ids, entity))
    return {int(row["step"]) for row in rows}, freed


class PostgresStorage:
    """`Storage` on PostgreSQL through an asyncpg pool."""

    blob_batch = 100  # blobs removed per transaction by the collector

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 20,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        self.pool = Pool(
            postgres_dsn(url),
            pool_min=pool_min,
            pool_max=pool_max,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
        )
        self.episode = self.pool.episode
        self.keys = KeyCache(self.pool)

    # Lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.keys.close()
        await self.pool.close()

    def pool_usage(self) -> PoolUsage | None:
        return self.pool.usage()

    async def check(self) -> None:
        async def ping(connection: Connection) -> None:
            await connection.fetchval("SELECT 1 FROM models LIMIT 1")

        await self.pool.run(ping, idempotent=True)

    # Keys -----------------------------------------------------------------------------------

    async def create_key(
        self, entity: str, name: str, key_hash: str, *, read_only: bool = False
    ) -> ApiKey:
        rules.require_storable(entity, name)
        key_id = str(uuid.uuid4())

        async def work(connection: Connection) -> ApiKey:
            row = await connection.fetchrow(
                "INSERT INTO api_keys (id, entity, name, key_hash, created_at, read_only) "
                f"VALUES ($1, $2, $3, $4, now(), $5) RETURNING {KEY_COLUMNS}",
                key_id,
                entity,
                name,
                key_hash,
                read_only,
            )
            return _key(row)

        return await self.pool.run(work, idempotent=False)

    async def list_keys(self) -> list[ApiKey]:
        async def work(connection: Connection) -> list[ApiKey]:
            rows = await connection.fetch(
                f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            )
            return [_key(row) for row in rows]

        return await self.pool.run(work, idempotent=True)

    async def revoke_key(self, key_id: str) -> ApiKey:
        if canonical_uuid(key_id) is None:
            raise KeyNotFound(key_id)

        async def work(connection: Connection) -> Any:
            async with connection.transaction():
                await connection.execute(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                    key_id,
                )
                row = await connection.fetchrow(
                    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id
                )
                # Delivered at commit to every server process, which then drops its key cache.
                await connection.execute(f"NOTIFY {KEYS_CHANNEL}")
            return row

        row = await self.pool.run(work, idempotent=True)
        # Our own NOTIFY reaches this process's listener only some milliseconds after the commit:
        # until then a cached lookup here would still accept the key we just revoked.
        self.keys.clear()
        if row is None:
            raise KeyNotFound(key_id)
        return _key(row)

    async def count_keys(self) -> int:
        async def work(connection: Connection) -> int:
            return int(await connection.fetchval("SELECT count(*) FROM api_keys"))

        return await self.pool.run(work, idempotent=True)

    async def caller_for_key(self, key_hash: str) -> Caller | None:
        if not rules.storable(key_hash):
            return None

        async def work(connection: Connection) -> Caller | None:
            # Looked up by its hash through the unique index: the comparison is of hashes, so
            # its timing says nothing about the key.
            row = await connection.fetchrow(
                "SELECT entity, read_only FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                key_hash,
            )
            return None if row is None else Caller(str(row["entity"]), bool(row["read_only"]))

        async def lookup() -> Caller | None:
            return await self.pool.run(work, idempotent=True)

        return await self.keys.caller(key_hash, lookup)

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

        async def work(connection: Connection) -> tuple[Model, bool]:
            while True:
                # The partial unique index decides races between processes creating one name.
                row = await connection.fetchrow(
                    "INSERT INTO models (id, entity, project, name, base_model, created_at) "
                    "VALUES ($1, $2, $3, $4, $5, now()) "
                    "ON CONFLICT (entity, project, name) WHERE deleted_at IS NULL DO NOTHING "
                    f"RETURNING {MODEL_COLUMNS}",
                    str(uuid.uuid4()),
                    entity,
                    project,
                    name,
                    base_model,
                )
                if row is not None:
                    return _model(row), True
                existing = await connection.fetchrow(
                    f"SELECT {MODEL_COLUMNS} FROM models "
                    "WHERE entity = $1 AND project = $2 AND name = $3 AND deleted_at IS NULL",
                    entity,
                    project,
                    name,
                )
                if existing is None:
                    continue  # deleted since the conflict: the name is free again
                if return_existing:
                    return _model(existing), False
                raise ModelNameTaken(project, name)

        return await self.pool.run(work, idempotent=False)

    async def model_summary(self, entity: str, model_id: str) -> ModelSummary:
        _known_model(entity, model_id)

        async def work(connection: Connection) -> Any:
            async with connection.transaction(readonly=True):
                if await connection.fetchval(LIVE_MODEL, model_id, entity) is None:
                    raise ModelNotFound()
                return await connection.fetchrow(MODEL_SUMMARY, model_id)

        row = await self.pool.run(work, idempotent=True)
        return ModelSummary(
            int(row["checkpoints"]),
            None if row["latest_step"] is None else int(row["latest_step"]),
            row["last_update"],
            int(row["files"]),
            int(row["logical_bytes"]),
            int(row["stored_bytes"]),
        )

    async def get_model(self, entity: str, model_id: str) -> Model:
        _known_model(entity, model_id)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT {MODEL_COLUMNS} FROM models "
                "WHERE id = $1::uuid AND entity = $2 AND deleted_at IS NULL",
                model_id,
                entity,
            )

        row = await self.pool.run(work, idempotent=True)
        if row is None:
            raise ModelNotFound()
        return _model(row)

    async def get_model_by_name(self, entity: str, project: str, name: str) -> Model:
        if not rules.storable(entity, project, name):
            raise ModelNotFound()

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT {MODEL_COLUMNS} FROM models "
                "WHERE entity = $1 AND project = $2 AND name = $3 AND deleted_at IS NULL",
                entity,
                project,
                name,
            )

        row = await self.pool.run(work, idempotent=True)
        if row is None:
            raise ModelNotFound()
        return _model(row)

    async def list_models(
        self, entity: str, *, project: str | None, after: str | None, limit: int, order: Order
    ) -> ModelPage:
        if after is not None and (canonical_uuid(after) is None or not rules.storable(entity)):
            raise InvalidCursor.for_models()
        if not rules.storable(entity):
            return ModelPage([], has_more=False)
        # No model has such a project, but `after` is checked as under any other filter.
        nothing_matches = project is not None and not rules.storable(project)
        comparison, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        project_filter = "AND project = $3" if project is not None else "AND $3::text IS NULL"
        if after is None:
            seek = ""
        else:
            seek = (
                f"AND (created_at, id) {comparison} "
                "(SELECT created_at, id FROM models WHERE id = $4::uuid AND entity = $1)"
            )

        async def work(connection: Connection) -> ModelPage:
            if after is not None:
                known = await connection.fetchval(
                    "SELECT 1 FROM models WHERE id = $1::uuid AND entity = $2", after, entity
                )
                if known is None:
                    raise InvalidCursor.for_models()
            if nothing_matches:
                return ModelPage([], has_more=False)
            args: list[object] = [entity, limit + 1, project]
            if after is not None:
                args.append(after)
            rows = await connection.fetch(
                f"SELECT {MODEL_COLUMNS} FROM models "
                f"WHERE entity = $1 AND deleted_at IS NULL {project_filter} {seek} "
                f"ORDER BY created_at {direction}, id {direction} LIMIT $2",
                *args,
            )
            return ModelPage([_model(row) for row in rows[:limit]], has_more=len(rows) > limit)

        return await self.pool.run(work, idempotent=True)

    async def delete_model(self, entity: str, model_id: str) -> int:
        _known_model(entity, model_id)

        async def work(connection: Connection) -> int:
            async with connection.transaction():
                # Blocks writers holding the model FOR SHARE, so none adds a row after our deletes.
                found = await connection.fetchval(LIVE_MODEL + " FOR UPDATE", model_id, entity)
                if found is None:
                    raise ModelNotFound()
                count = await connection.fetchval(
                    "WITH gone AS (DELETE FROM checkpoints WHERE model_id = $1::uuid RETURNING 1) "
                    "SELECT count(*) FROM gone",
                    model_id,
                )
                await _delete_model_rows(connection, model_id)
                # One transaction: the rows are gone when the model is marked, so it is purged too.
                await connection.execute(
                    "UPDATE models SET deleted_at = now(), purged_at = now() WHERE id = $1::uuid",
                    model_id,
                )
            return int(count)

        return await self.pool.run(work, idempotent=False)

    async def purge_deleted_models(self) -> int:
        # A delete here is one transaction, so only models deleted before `purged_at` existed (or
        # by another version) can be left with rows.
        async def work(connection: Connection) -> int:
            unpurged = await connection.fetch(
                "SELECT id FROM models WHERE deleted_at IS NOT NULL AND purged_at IS NULL"
            )
            for row in unpurged:
                async with connection.transaction():
                    await connection.execute(
                        "DELETE FROM checkpoints WHERE model_id = $1::uuid", row["id"]
                    )
                    await _delete_model_rows(connection, row["id"])
                    await connection.execute(
                        "UPDATE models SET purged_at = now() WHERE id = $1::uuid", row["id"]
                    )
            return len(unpurged)

        return await self.pool.run(work, idempotent=True)

    # Checkpoints ----------------------------------------------------------------------------

    async def list_checkpoints(
        self, entity: str, model_id: str, *, after: str | None, limit: int, order: Order
    ) -> CheckpointPage:
        _known_model(entity, model_id)
        cursor = None if after is None else canonical_uuid(after)
        query = PAGE_QUERIES[(order, after is not None)]

        async def work(connection: Connection) -> Any:
            if after is None:
                return await connection.fetch(query, model_id, entity, limit + 1)
            # A malformed cursor must not reach PostgreSQL as a uuid: seek to no checkpoint.
            return await connection.fetch(query, model_id, entity, cursor, limit + 1)

        rows = await self.pool.run(work, idempotent=True)
        head = rows[0]
        if not head["found"]:
            raise ModelNotFound()
        if not head["positioned"]:
            if head["expired"]:
                raise CursorExpired()
            raise InvalidCursor.for_checkpoints()
        if head["id"] is None:
            return CheckpointPage([], has_more=False)
        # Columns 3..5 are id (as text: no UUID objects to build and format), step, metrics.
        data: list[CheckpointRow] = [(row[3], row[4], row[5]) for row in rows]
        has_more = len(data) > limit
        if has_more:
            data.pop()
        return CheckpointPage(data, has_more)

    async def register_checkpoint(
        self, entity: str, model_id: str, step: int, metrics: dict[str, float]
    ) -> tuple[Checkpoint, bool]:
        _known_model(entity, model_id)
        rules.require_storable(*metrics)
        metrics_json = encode_metrics(metrics)
        names, values = list(metrics), list(metrics.values())

        async def work(connection: Connection) -> tuple[Checkpoint, bool]:
            async with connection.transaction():
                await _lock_live_model(connection, entity, model_id)
                while True:
                    # The unique index on (model_id, step) decides races between processes.
                    row = await connection.fetchrow(
                        "INSERT INTO checkpoints "
                        "(model_id, step, id, metrics, created_at, updated_at) "
                        "VALUES ($1::uuid, $2, $3::uuid, $4, now(), now()) "
                        f"ON CONFLICT (model_id, step) DO NOTHING RETURNING {CHECKPOINT_COLUMNS}",
                        model_id,
                        step,
                        str(uuid.uuid4()),
                        metrics_json,
                    )
                    if row is not None:
                        await connection.execute(UPSERT_METRICS, model_id, step, names, values)
                        return _checkpoint(row), True
                    existing = await connection.fetchrow(
                        f"SELECT {CHECKPOINT_DETAIL} FROM checkpoints "
                        "WHERE model_id = $1::uuid AND step = $2",
                        model_id,
                        step,
                    )
                    if existing is None:
                        continue  # deleted since the conflict: the step is free again
                    rules.check_repeat_registration(step, existing["metrics"], metrics)
                    return _checkpoint(existing), False

        return await self.pool.run(work, idempotent=False)

    async def get_checkpoint(self, entity: str, model_id: str, checkpoint_id: str) -> Checkpoint:
        _known_model(entity, model_id)
        wanted = canonical_uuid(checkpoint_id)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT m.found, c.{', c.'.join(CHECKPOINT_COLUMNS.split(', '))}, "
                f"{file_totals('c')} "
                "FROM (SELECT EXISTS (" + LIVE_MODEL + ") AS found) m "
                "LEFT JOIN checkpoints c ON m.found AND c.id = $3::uuid AND c.model_id = $1::uuid",
                model_id,
                entity,
                wanted,
            )

        return _found_checkpoint(await self.pool.run(work, idempotent=True))

    async def get_checkpoint_at_step(self, entity: str, model_id: str, step: int) -> Checkpoint:
        _known_model(entity, model_id)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT m.found, c.{', c.'.join(CHECKPOINT_COLUMNS.split(', '))}, "
                f"{file_totals('c')} "
                "FROM (SELECT EXISTS (" + LIVE_MODEL + ") AS found) m "
                "LEFT JOIN checkpoints c ON m.found AND c.model_id = $1::uuid AND c.step = $3",
                model_id,
                entity,
                step,
            )

        return _found_checkpoint(await self.pool.run(work, idempotent=True))

    async def update_metrics(
        self, entity: str, model_id: str, checkpoint_id: str, metrics: dict[str, float]
    ) -> Checkpoint:
        _known_model(entity, model_id)
        rules.require_storable(*metrics)
        wanted = canonical_uuid(checkpoint_id)
        names, values = list(metrics), list(metrics.values())

        async def work(connection: Connection) -> Checkpoint:
            async with connection.transaction():
                await _lock_live_model(connection, entity, model_id)
                if wanted is None:
                    raise CheckpointNotFound()
                # FOR UPDATE: two concurrent merges apply one after the other, neither is lost.
                current = await connection.fetchrow(
                    "SELECT step, metrics FROM checkpoints "
                    "WHERE id = $1::uuid AND model_id = $2::uuid FOR UPDATE",
                    wanted,
                    model_id,
                )
                if current is None:
                    raise CheckpointNotFound()
                row = await connection.fetchrow(
                    "UPDATE checkpoints SET metrics = $1, updated_at = now() "
                    "WHERE id = $2::uuid AND model_id = $3::uuid "
                    f"RETURNING {CHECKPOINT_DETAIL}",
                    rules.merge_metrics(current["metrics"], metrics),
                    wanted,
                    model_id,
                )
                await connection.execute(UPSERT_METRICS, model_id, current["step"], names, values)
            return _checkpoint(row)

        return await self.pool.run(work, idempotent=False)

    async def delete_checkpoints(
        self, entity: str, model_id: str, steps: list[int]
    ) -> DeleteResult:
        _known_model(entity, model_id)
        requested = rules.unique_steps(steps)
        candidates = rules.possible_steps(requested)

        async def work(connection: Connection) -> set[int]:
            async with connection.transaction():
                await _lock_live_model(connection, entity, model_id)
                if not candidates:
                    return set()
                # Lock first (in step order, as everywhere), delete in a later statement: its
                # fresh snapshot then sees the metric rows of any PATCH that committed while we
                # waited, and deletes them too.
                await connection.execute(LOCK_STEPS, model_id, candidates)
                return (await _delete_steps(connection, entity, model_id, candidates))[0]

        deleted = await self.pool.run(work, idempotent=False)
        return DeleteResult(len(deleted), rules.not_found_steps(requested, deleted))

    async def list_deleted_steps(
        self, entity: str, model_id: str, *, after_step: int | None, limit: int
    ) -> DeletedStepPage:
        _known_model(entity, model_id)

        async def work(connection: Connection) -> list[Any]:
            async with connection.transaction(readonly=True):
                if await connection.fetchval(LIVE_MODEL, model_id, entity) is None:
                    raise ModelNotFound()
                return list(
                    await connection.fetch(
                        DELETED_STEPS, model_id, -1 if after_step is None else after_step, limit + 1
                    )
                )

        rows = await self.pool.run(work, idempotent=True)
        return rules.deleted_step_page([(row[0], row[1]) for row in rows], limit)

    async def best_checkpoint(
        self, entity: str, model_id: str, metric: str, mode: Mode
    ) -> Checkpoint:
        _known_model(entity, model_id)
        storable = rules.storable(metric)

        async def work(connection: Connection) -> Any:
            async with connection.transaction(readonly=True):
                if await connection.fetchval(LIVE_MODEL, model_id, entity) is None:
                    raise ModelNotFound()
                if not storable:
                    return None
                return await connection.fetchrow(BEST_ONE[mode], model_id, metric)

        row = await self.pool.run(work, idempotent=True)
        if row is None:
            raise MetricNotFound(metric)
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
        _known_model(entity, model_id)

        async def work(connection: Connection) -> RetentionResult:
            async with connection.transaction(readonly=dry_run):
                if dry_run:
                    if await connection.fetchval(LIVE_MODEL, model_id, entity) is None:
                        raise ModelNotFound()
                else:
                    await _lock_live_model(connection, entity, model_id)
                # A run locks the rows it decides on (in step order): a concurrent delete waits, so
                # the report is exact, and checkpoints registered meanwhile are not in the list, so
                # never deleted. A dry run changes nothing and locks nothing.
                live = [
                    (int(row["step"]), row["id"])
                    for row in await connection.fetch(
                        LIVE_STEPS if dry_run else LOCK_ALL_STEPS, model_id
                    )
                ]
                best: list[int] = []
                if keep_best is not None and rules.ranks_best(keep_best):
                    rows = await connection.fetch(
                        BEST_STEPS[keep_best.mode], model_id, keep_best.metric, keep_best.k
                    )
                    best = [int(row["step"]) for row in rows]
                plan = rules.plan_retention(live, keep_latest, best)
                steps = [step for step, _ in plan.deleted]
                freed = 0
                if dry_run and steps:
                    ids = [id_ for _, id_ in plan.deleted]
                    freed = int(await connection.fetchval(FREED_BY, ids, entity))
                elif steps:
                    _, freed = await _delete_steps(connection, entity, model_id, steps)
            return RetentionResult(plan.kept_steps, steps, freed)

        return await self.pool.run(work, idempotent=dry_run)

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
        _known_model(entity, model_id)
        storable = rules.storable(metric)

        async def work(connection: Connection) -> list[tuple[int, float]]:
            async with connection.transaction(readonly=True):
                if await connection.fetchval(LIVE_MODEL, model_id, entity) is None:
                    raise ModelNotFound()
                if not storable:
                    return []
                rows = await connection.fetch(METRIC_SERIES, model_id, metric, step_min, step_max)
                return [(int(row[0]), float(row[1])) for row in rows]

        rows = await self.pool.run(work, idempotent=True)
        return MetricSeries(len(rows), rules.downsample_series(rows, points))

    async def list_metric_names(
        self, entity: str, model_id: str, *, after: str | None, limit: int
    ) -> MetricNamePage:
        _known_model(entity, model_id)
        if after is not None:
            rules.require_storable(after)

        async def work(connection: Connection) -> list[str]:
            async with connection.transaction(readonly=True):
                if await connection.fetchval(LIVE_MODEL, model_id, entity) is None:
                    raise ModelNotFound()
                rows = await connection.fetch(METRIC_NAMES, model_id, after or "", limit)
                return [str(row[0]) for row in rows]

        return rules.metric_name_page(await self.pool.run(work, idempotent=True), limit)

    async def purge_tombstones(self, older_than: datetime) -> int:
        async def work(connection: Connection) -> int:
            count = await connection.fetchval(
                """
                WITH gone AS (
                    DELETE FROM checkpoint_tombstones WHERE deleted_at < $1
                    RETURNING id, model_id
                ), remembered AS (
                    INSERT INTO expired_cursors (id, model_id, purged_at)
                    SELECT id, model_id, now() FROM gone
                    ON CONFLICT (id) DO UPDATE SET purged_at = EXCLUDED.purged_at
                )
                SELECT count(*) FROM gone
                """,
                older_than,
            )
            return int(count)

        return await self.pool.run(work, idempotent=False)

    # Files ----------------------------------------------------------------------------------

    async def require_checkpoint(self, entity: str, model_id: str, checkpoint_id: str) -> None:
        _known_model(entity, model_id)
        wanted = canonical_uuid(checkpoint_id)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT EXISTS ({LIVE_MODEL}) AS model, EXISTS ({LIVE_CHECKPOINT}) AS checkpoint",
                model_id,
                entity,
                wanted,
            )

        row = await self.pool.run(work, idempotent=True)
        if not row["model"]:
            raise ModelNotFound()
        if not row["checkpoint"]:
            raise CheckpointNotFound()

    async def touch_blob(self, sha256: str, size_bytes: int) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(TOUCH_BLOB, sha256, size_bytes)

        await self.pool.run(work, idempotent=True)

    async def _lock_live_checkpoint(
        self, connection: Connection, entity: str, model_id: str, checkpoint_id: str | None
    ) -> None:
        await _lock_live_model(connection, entity, model_id)
        # FOR SHARE: a delete of the checkpoint (FOR UPDATE) waits for this transaction.
        if checkpoint_id is None or (
            await connection.fetchval(
                "SELECT 1 FROM checkpoints WHERE id = $1::uuid AND model_id = $2::uuid FOR SHARE",
                checkpoint_id,
                model_id,
            )
            is None
        ):
            raise CheckpointNotFound()

    async def attach_file(
        self,
        entity: str,
        model_id: str,
        checkpoint_id: str,
        path: str,
        sha256: str,
        size_bytes: int,
    ) -> tuple[FileRecord, bool]:
        _known_model(entity, model_id)
        wanted = canonical_uuid(checkpoint_id)

        async def work(connection: Connection) -> tuple[FileRecord, bool]:
            async with connection.transaction():
                await self._lock_live_checkpoint(connection, entity, model_id, wanted)
                # The blob row first: the collector holds it while it removes an unreferenced
                # blob, so this waits for that and then sees the row gone.
                await connection.execute(TOUCH_BLOB, sha256, size_bytes)
                inserted = await connection.fetchval(
                    "INSERT INTO checkpoint_files "
                    "(checkpoint_id, path, model_id, entity, sha256, size_bytes, created_at) "
                    "VALUES ($1::uuid, $2, $3::uuid, $4, $5, $6, now()) "
                    "ON CONFLICT (checkpoint_id, path) DO NOTHING RETURNING 1",
                    wanted,
                    path,
                    model_id,
                    entity,
                    sha256,
                    size_bytes,
                )
                if inserted is not None:
                    return FileRecord(path, sha256, size_bytes), True
                existing = await connection.fetchrow(
                    "SELECT sha256, size_bytes FROM checkpoint_files "
                    "WHERE checkpoint_id = $1::uuid AND path = $2",
                    wanted,
                    path,
                )
            if existing["sha256"] != sha256:
                raise FileConflict()
            return FileRecord(path, sha256, int(existing["size_bytes"])), False

        return await self.pool.run(work, idempotent=False)

    async def get_file(
        self, entity: str, model_id: str, checkpoint_id: str, path: str
    ) -> FileRecord:
        _known_model(entity, model_id)
        wanted = canonical_uuid(checkpoint_id)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT EXISTS ({LIVE_MODEL}) AS model, EXISTS ({LIVE_CHECKPOINT}) AS checkpoint, "
                "f.sha256, f.size_bytes FROM (SELECT 1) one LEFT JOIN checkpoint_files f "
                "ON f.checkpoint_id = $3::uuid AND f.path = $4",
                model_id,
                entity,
                wanted,
                path,
            )

        row = await self.pool.run(work, idempotent=True)
        if not row["model"]:
            raise ModelNotFound()
        if not row["checkpoint"]:
            raise CheckpointNotFound()
        if row["sha256"] is None:
            raise FileNotFound()
        return FileRecord(path, row["sha256"], int(row["size_bytes"]))

    async def list_files(
        self, entity: str, model_id: str, checkpoint_id: str, *, after: str | None, limit: int
    ) -> FilePage:
        _known_model(entity, model_id)
        wanted = canonical_uuid(checkpoint_id)

        async def work(connection: Connection) -> Any:
            async with connection.transaction(readonly=True):
                found = await connection.fetchrow(
                    f"SELECT EXISTS ({LIVE_MODEL}) AS model, "
                    f"EXISTS ({LIVE_CHECKPOINT}) AS checkpoint",
                    model_id,
                    entity,
                    wanted,
                )
                if not found["model"]:
                    raise ModelNotFound()
                if not found["checkpoint"]:
                    raise CheckpointNotFound()
                return await connection.fetch(
                    "SELECT path, sha256, size_bytes FROM checkpoint_files "
                    "WHERE checkpoint_id = $1::uuid AND path > $2 ORDER BY path LIMIT $3",
                    wanted,
                    after if after is not None else "",
                    limit + 1,
                )

        rows = await self.pool.run(work, idempotent=True)
        files = [FileRecord(row["path"], row["sha256"], int(row["size_bytes"])) for row in rows]
        return FilePage(files[:limit], has_more=len(files) > limit)

    async def delete_file(self, entity: str, model_id: str, checkpoint_id: str, path: str) -> None:
        _known_model(entity, model_id)
        wanted = canonical_uuid(checkpoint_id)

        async def work(connection: Connection) -> Any:
            async with connection.transaction():
                await self._lock_live_checkpoint(connection, entity, model_id, wanted)
                return await connection.fetchval(
                    "DELETE FROM checkpoint_files WHERE checkpoint_id = $1::uuid AND path = $2 "
                    "RETURNING 1",
                    wanted,
                    path,
                )

        if await self.pool.run(work, idempotent=True) is None:
            raise FileNotFound()

    async def held_contents(self, entity: str, sha256s: list[str]) -> dict[str, int]:
        if not rules.storable(entity, *sha256s):
            return {}

        async def work(connection: Connection) -> Any:
            return await connection.fetch(
                "SELECT DISTINCT sha256, size_bytes FROM checkpoint_files "
                "WHERE entity = $1 AND sha256 = ANY($2::text[])",
                entity,
                sha256s,
            )

        rows = await self.pool.run(work, idempotent=True)
        return {row["sha256"]: int(row["size_bytes"]) for row in rows}

    async def usage(self, entity: str) -> Usage:
        if not rules.storable(entity):
            return Usage(entity, 0, 0, 0, 0)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                """
                SELECT
                  (SELECT count(*) FROM checkpoints c JOIN models m ON m.id = c.model_id
                    WHERE m.entity = $1 AND m.deleted_at IS NULL) AS checkpoints,
                  count(*) AS files, coalesce(sum(size_bytes), 0) AS logical,
                  (SELECT coalesce(sum(size_bytes), 0) FROM (
                      SELECT DISTINCT f.sha256, f.size_bytes FROM checkpoint_files f
                        JOIN models m ON m.id = f.model_id
                       WHERE f.entity = $1 AND m.deleted_at IS NULL) d) AS stored
                  FROM checkpoint_files f JOIN models m ON m.id = f.model_id
                 WHERE f.entity = $1 AND m.deleted_at IS NULL
                """,
                entity,
            )

        row = await self.pool.run(work, idempotent=True)
        return Usage(
            entity,
            int(row["checkpoints"]),
            int(row["files"]),
            int(row["logical"]),
            int(row["stored"]),
        )

    async def collect_blobs(
        self, older_than: datetime, remove: Callable[[str], Coroutine[Any, Any, None]]
    ) -> tuple[int, int]:
        async def work(connection: Connection) -> tuple[int, int]:
            async with connection.transaction():
                # The rows stay locked until the objects are gone: an upload or a file touching
                # one of these rows waits, then finds it gone (and writes its own blob).
                rows = await connection.fetch(
                    "DELETE FROM blobs WHERE sha256 IN ("
                    "  SELECT sha256 FROM blobs b WHERE touched_at < $1 AND NOT EXISTS "
                    "  (SELECT 1 FROM checkpoint_files f WHERE f.sha256 = b.sha256) "
                    "  LIMIT $2 FOR UPDATE SKIP LOCKED) "
                    "AND touched_at < $1 RETURNING sha256, size_bytes",
                    older_than,
                    self.blob_batch,
                )
                for row in rows:
                    await remove(row["sha256"])
            return len(rows), sum(int(row["size_bytes"]) for row in rows)

        count = freed = 0
        while True:
            removed, size = await self.pool.run(work, idempotent=False)
            count, freed = count + removed, freed + size
            if removed < self.blob_batch:
                return count, freed

    async def create_upload(
        self, entity: str, model_id: str, checkpoint_id: str, path: str, upload_id: str
    ) -> UploadSession:
        _known_model(entity, model_id)
        wanted = canonical_uuid(checkpoint_id)
        upload = UploadSession(upload_id, entity, model_id, checkpoint_id, path)

        async def work(connection: Connection) -> None:
            async with connection.transaction():
                await self._lock_live_checkpoint(connection, entity, model_id, wanted)
                await connection.execute(
                    "INSERT INTO uploads "
                    "(id, entity, model_id, checkpoint_id, path, created_at) "
                    "VALUES ($1::uuid, $2, $3::uuid, $4::uuid, $5, now())",
                    upload.id,
                    entity,
                    model_id,
                    wanted,
                    path,
                )

        await self.pool.run(work, idempotent=False)
        return upload

    async def get_upload(self, entity: str, upload_id: str) -> UploadSession:
        if canonical_uuid(upload_id) is None or not rules.storable(entity):
            raise UploadNotFound()

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                "SELECT u.model_id, u.checkpoint_id, u.path FROM uploads u "
                "JOIN models m ON m.id = u.model_id "
                "WHERE u.id = $1::uuid AND u.entity = $2 AND m.deleted_at IS NULL",
                upload_id,
                entity,
            )

        row = await self.pool.run(work, idempotent=True)
        if row is None:
            raise UploadNotFound()
        return UploadSession(
            upload_id, entity, str(row["model_id"]), str(row["checkpoint_id"]), row["path"]
        )

    async def end_upload(self, upload_id: str) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute("DELETE FROM uploads WHERE id = $1::uuid", upload_id)

        await self.pool.run(work, idempotent=True)

    async def expire_uploads(self, older_than: datetime) -> list[str]:
        async def work(connection: Connection) -> Any:
            return await connection.fetch(
                "DELETE FROM uploads WHERE created_at < $1 RETURNING id::text", older_than
            )

        return [row["id"] for row in await self.pool.run(work, idempotent=False)]


async def _delete_model_rows(connection: Connection, model_id: str) -> None:
    tables = (
        "checkpoint_files",
        "uploads",
        "checkpoint_metrics",
        "checkpoint_tombstones",
        "expired_cursors",
    )
    for table in tables:
        await connection.execute(f"DELETE FROM {table} WHERE model_id = $1::uuid", model_id)


def _found_checkpoint(row: Any) -> Checkpoint:
    """A checkpoint read beside its model's liveness (`m.found`)."""
    if not row["found"]:
        raise ModelNotFound()
    if row["id"] is None:
        raise CheckpointNotFound()
    return _checkpoint(row)
