"""The PostgreSQL backend: an asyncpg pool, one transaction per write, unique indexes decide races.

Semantics follow `sqlite.py` exactly. Connection failures and timeouts raise `DatabaseUnavailable`
(the server answers 503); the pool replaces dead connections by itself when the database returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson

from .base import (
    ApiKey,
    BestRule,
    Checkpoint,
    CheckpointPage,
    CheckpointRow,
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
from .urls import postgres_dsn

logger = logging.getLogger(__name__)

T = TypeVar("T")
Connection = Any  # asyncpg ships no type information

# `ckpt keys revoke` in any process notifies every server process, which drops its key cache.
KEYS_CHANNEL = "ckpt_keys"
KEY_CACHE_TTL = 10.0  # seconds; bounds staleness should a notification ever be missed
LISTENER_HEARTBEAT = 5.0
MAX_STEP = 2**63 - 1

# The connection is gone (terminated, reset, refused, server shutting down): another one may work.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InsufficientResourcesError,
)
# The database did not answer in time: retrying would only double the wait.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncpg.exceptions.QueryCanceledError,
)

_MODEL_COLUMNS = "id, entity, project, name, base_model, created_at"
_CHECKPOINT_COLUMNS = "id, step, metrics, created_at, updated_at"
_KEY_COLUMNS = "id, entity, name, created_at, revoked_at"
_LIVE_MODEL = "SELECT 1 FROM models WHERE id = $1::uuid AND entity = $2 AND deleted_at IS NULL"


def _page_query(order: Order, *, with_cursor: bool) -> str:
    """The whole list request in one round trip: model check, cursor position and the page.

    Always yields at least one row: `found` (the model is live and the caller's), the cursor state,
    then the page's columns (NULL on an empty page). $1 model, $2 entity, then `after` (if any) and
    the limit + 1.
    """
    comparison, direction = (">", "") if order == "asc" else ("<", " DESC")
    limit = "$4" if with_cursor else "$3"
    if with_cursor:
        cursor = """
    , position AS (
        SELECT step, id, false AS expired
          FROM checkpoints WHERE id = $3::uuid AND model_id = $1::uuid
        UNION ALL
        SELECT step, id, false
          FROM checkpoint_tombstones WHERE id = $3::uuid AND model_id = $1::uuid
        UNION ALL
        SELECT NULL, NULL, true FROM expired_cursors WHERE id = $3::uuid AND model_id = $1::uuid
        LIMIT 1
    )"""
        cursor_join = "LEFT JOIN position ON true"
        cursor_columns = "position.step IS NOT NULL AS positioned, position.expired"
        seek = (
            "AND position.step IS NOT NULL "
            f"AND (c.step, c.id) {comparison} (position.step, position.id)"
        )
    else:
        cursor, cursor_join, cursor_columns, seek = (
            "",
            "",
            "true AS positioned, false AS expired",
            "",
        )
    return f"""
    WITH model AS (
        SELECT EXISTS (
            SELECT 1 FROM models WHERE id = $1::uuid AND entity = $2 AND deleted_at IS NULL
        ) AS found
    ){cursor}
    SELECT model.found, {cursor_columns}, page.id::text AS id, page.step, page.metrics
      FROM model
      {cursor_join}
      LEFT JOIN LATERAL (
          SELECT c.id, c.step, c.metrics FROM checkpoints c
           WHERE model.found AND c.model_id = $1::uuid {seek}
           ORDER BY c.step{direction}, c.id{direction}
           LIMIT {limit}
      ) page ON true
     ORDER BY page.step{direction}, page.id{direction}
    """


_PAGE_QUERIES = {
    (order, with_cursor): _page_query(order, with_cursor=with_cursor)
    for order in ("asc", "desc")
    for with_cursor in (False, True)
}

# Move the live checkpoints of $1 at steps $2 to the tombstones; their metrics go with
# _DELETE_METRICS.
_DELETE_STEPS = """
    WITH gone AS (
        DELETE FROM checkpoints WHERE model_id = $1::uuid AND step = ANY($2::bigint[])
        RETURNING id, model_id, step, metrics
    ), tombstones AS (
        INSERT INTO checkpoint_tombstones (id, model_id, step, deleted_at)
        SELECT id, model_id, step, now() FROM gone
    )
    SELECT step, metrics FROM gone
"""

# By primary key, from the names in each deleted checkpoint's metrics (the JSON and the rows change
# together): `checkpoint_metrics` has no index on (model_id, step), and scanning all of a model's
# metric rows for a few steps took 18 ms at 100,000 checkpoints.
_DELETE_METRICS = """
    DELETE FROM checkpoint_metrics m
     USING unnest($2::bigint[], $3::text[]) AS d(step, name)
     WHERE m.model_id = $1::uuid AND m.step = d.step AND m.name = d.name
"""


async def _delete_steps(connection: Connection, model_id: str, steps: list[int]) -> set[int]:
    """Delete the checkpoints at `steps` (rows already locked), leaving tombstones; the steps gone."""
    rows = await connection.fetch(_DELETE_STEPS, model_id, steps)
    metric_steps: list[int] = []
    metric_names: list[str] = []
    for row in rows:
        for name in orjson.loads(row["metrics"]):
            metric_steps.append(row["step"])
            metric_names.append(name)
    if metric_names:
        await connection.execute(_DELETE_METRICS, model_id, metric_steps, metric_names)
    return {int(row["step"]) for row in rows}


_UPSERT_METRICS = """
    INSERT INTO checkpoint_metrics (model_id, name, step, value)
    SELECT $1::uuid, name, $2::bigint, value
      FROM unnest($3::text[], $4::float8[]) AS m(name, value)
    ON CONFLICT (model_id, name, step) DO UPDATE SET value = EXCLUDED.value
"""

# Ties go to the later step. The index (model_id, name, value, step) serves `max` directly; for one
# best under `min`, the smallest value comes first and then the latest step holding it, so neither
# sorts the metric's rows (retention's top k under `min` sorts only ties, incrementally).
_BEST_STEPS = {
    "max": """
        SELECT step FROM checkpoint_metrics WHERE model_id = $1::uuid AND name = $2
         ORDER BY value DESC, step DESC LIMIT $3
    """,
    "min": """
        SELECT step FROM checkpoint_metrics WHERE model_id = $1::uuid AND name = $2
         ORDER BY value, step DESC LIMIT $3
    """,
}
_BEST_ONE = {
    "max": f"""
        SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints
         WHERE model_id = $1::uuid AND step = (
             SELECT step FROM checkpoint_metrics WHERE model_id = $1::uuid AND name = $2
              ORDER BY value DESC, step DESC LIMIT 1)
    """,
    "min": f"""
        SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints
         WHERE model_id = $1::uuid AND step = (
             SELECT max(step) FROM checkpoint_metrics
              WHERE model_id = $1::uuid AND name = $2 AND value = (
                  SELECT min(value) FROM checkpoint_metrics
                   WHERE model_id = $1::uuid AND name = $2))
    """,
}


class _ConnectionLost(Exception):
    """The pooled connection turned out to be dead."""


_RETRYABLE: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, _ConnectionLost)


def _storable(*texts: str) -> bool:
    """Whether PostgreSQL can hold the texts: `text` refuses NUL and lone surrogates."""
    for text in texts:
        if "\x00" in text:
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text or type(exc).__name__


def _unavailable(exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"database unavailable: {_reason(exc)}")


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
        str(row["id"]), int(row["step"]), row["metrics"], row["created_at"], row["updated_at"]
    )


def _key(row: Any) -> ApiKey:
    return ApiKey(str(row["id"]), row["entity"], row["name"], row["created_at"], row["revoked_at"])


async def _rollback_if_needed(connection: Connection) -> None:
    """Pool reset: nothing here changes session state, so skip asyncpg's reset round trip."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class PostgresStorage:
    """`Storage` on PostgreSQL through an asyncpg pool."""

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 20,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        self.dsn = postgres_dsn(url)
        self.pool_max = max(pool_max, 1)
        self.pool_min = min(max(pool_min, 0), self.pool_max)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self._pool: Any = None
        # key hash -> (entity, monotonic expiry); used only while the listener is connected.
        self._key_cache: dict[str, tuple[str, float]] = {}
        self._key_generation = 0
        self._listening = False
        self._listener_task: asyncio.Task[None] | None = None

    # Lifecycle ------------------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "timeout": self.connect_timeout,
            # Client-side bound as well, in case the server stops answering altogether.
            "command_timeout": self.statement_timeout + 1.0,
            "server_settings": {
                "application_name": "ckpt-registry",
                "plan_cache_mode": "force_generic_plan",
                "statement_timeout": str(int(self.statement_timeout * 1000)),
                "idle_in_transaction_session_timeout": str(int(self.statement_timeout * 1000)),
            },
        }

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                reset=_rollback_if_needed,
                **self._connect_kwargs(),
            )
        except (*_CONNECTION_ERRORS, *_TIMEOUT_ERRORS) as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener_task
            self._listener_task = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=self.connect_timeout)
            except (*_CONNECTION_ERRORS, *_TIMEOUT_ERRORS):
                pool.terminate()

    async def _run(self, work: Callable[[Connection], Awaitable[T]], *, idempotent: bool) -> T:
        """Run `work` on a pooled connection, mapping database outages to `DatabaseUnavailable`.

        After `pg_terminate_backend` or a server restart every pooled connection is dead: the first
        failure expires them all, and idempotent work is retried once on a fresh connection.
        """
        pool = self._pool
        if pool is None:
            raise DatabaseUnavailable("database unavailable: the storage is not open")
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            try:
                async with pool.acquire() as connection:
                    try:
                        return await work(connection)
                    except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
                        if isinstance(exc, asyncpg.InterfaceError) and not connection.is_closed():
                            raise  # a misuse of asyncpg: ours to fix, not an outage
                        # A backend killed while idle leaves its FATAL message unread on the
                        # socket; the next query trips asyncpg's protocol state instead.
                        connection.terminate()
                        raise _ConnectionLost(_reason(exc)) from exc
            except _TIMEOUT_ERRORS as exc:
                raise _unavailable(exc) from exc
            except _RETRYABLE as exc:
                await pool.expire_connections()
                if attempt + 1 == attempts:
                    raise _unavailable(exc) from exc
                logger.info("retrying on a fresh connection after: %s", _reason(exc))
        raise AssertionError("unreachable")

    async def check(self) -> None:
        async def ping(connection: Connection) -> None:
            await connection.fetchval("SELECT 1 FROM models LIMIT 1")

        await self._run(ping, idempotent=True)

    # Keys -----------------------------------------------------------------------------------

    async def _listen_for_key_changes(self) -> None:
        """Keep a connection LISTENing on KEYS_CHANNEL; the key cache is used only while it is."""
        delay = 0.2
        while True:
            connection: Connection = None
            try:
                connection = await asyncpg.connect(self.dsn, **self._connect_kwargs())
                connection.add_termination_listener(self._listener_lost)
                await connection.add_listener(KEYS_CHANNEL, self._keys_changed)
                # Anything revoked before LISTEN took effect may be cached: start empty.
                self._clear_key_cache()
                self._listening = True
                delay = 0.2
                while not connection.is_closed():
                    await asyncio.sleep(LISTENER_HEARTBEAT)
                    await connection.fetchval("SELECT 1", timeout=self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: drop the cache, reconnect with backoff
                logger.debug("key listener lost: %s", _reason(exc))
            finally:
                self._listening = False
                self._clear_key_cache()
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _listener_lost(self, _connection: Connection) -> None:
        self._listening = False
        self._clear_key_cache()

    def _keys_changed(self, *_args: object) -> None:
        self._clear_key_cache()

    def _clear_key_cache(self) -> None:
        self._key_generation += 1
        self._key_cache.clear()

    async def create_key(self, entity: str, name: str, key_hash: str) -> ApiKey:
        key_id = str(uuid.uuid4())

        async def work(connection: Connection) -> ApiKey:
            row = await connection.fetchrow(
                "INSERT INTO api_keys (id, entity, name, key_hash, created_at) "
                f"VALUES ($1, $2, $3, $4, now()) RETURNING {_KEY_COLUMNS}",
                key_id,
                entity,
                name,
                key_hash,
            )
            return _key(row)

        return await self._run(work, idempotent=False)

    async def list_keys(self) -> list[ApiKey]:
        async def work(connection: Connection) -> list[ApiKey]:
            rows = await connection.fetch(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            )
            return [_key(row) for row in rows]

        return await self._run(work, idempotent=True)

    async def revoke_key(self, key_id: str) -> ApiKey:
        if canonical_uuid(key_id) is None:
            raise KeyNotFound(f"no key with id {key_id!r}")

        async def work(connection: Connection) -> Any:
            async with connection.transaction():
                await connection.execute(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                    key_id,
                )
                row = await connection.fetchrow(
                    f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id
                )
                # Delivered at commit to every server process, which then drops its key cache.
                await connection.execute(f"NOTIFY {KEYS_CHANNEL}")
            return row

        row = await self._run(work, idempotent=True)
        if row is None:
            raise KeyNotFound(f"no key with id {key_id!r}")
        return _key(row)

    async def count_keys(self) -> int:
        async def work(connection: Connection) -> int:
            return int(await connection.fetchval("SELECT count(*) FROM api_keys"))

        return await self._run(work, idempotent=True)

    async def entity_for_key(self, key_hash: str) -> str | None:
        loop = asyncio.get_running_loop()
        if self._listener_task is None and self._pool is not None:
            # Started by the first key lookup, so CLI commands and scripts open no extra connection.
            self._listener_task = loop.create_task(self._listen_for_key_changes())
        cached = self._key_cache.get(key_hash)
        if cached is not None and self._listening and cached[1] > loop.time():
            return cached[0]
        if not _storable(key_hash):
            return None
        generation = self._key_generation

        async def work(connection: Connection) -> str | None:
            entity = await connection.fetchval(
                "SELECT entity FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
            )
            return None if entity is None else str(entity)

        entity = await self._run(work, idempotent=True)
        # Only live keys are cached (a new key works at once); a revocation that arrived while we
        # read bumped the generation, so a stale answer is not stored.
        if entity is not None and self._listening and generation == self._key_generation:
            self._key_cache[key_hash] = (entity, loop.time() + KEY_CACHE_TTL)
        return entity

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
        if not _storable(entity, project, name, base_model):
            raise ValueError("names must not contain NUL characters or lone surrogates")

        async def work(connection: Connection) -> tuple[Model, bool]:
            while True:
                # The partial unique index decides races between processes creating one name.
                row = await connection.fetchrow(
                    "INSERT INTO models (id, entity, project, name, base_model, created_at) "
                    "VALUES ($1, $2, $3, $4, $5, now()) "
                    "ON CONFLICT (entity, project, name) WHERE deleted_at IS NULL DO NOTHING "
                    f"RETURNING {_MODEL_COLUMNS}",
                    str(uuid.uuid4()),
                    entity,
                    project,
                    name,
                    base_model,
                )
                if row is not None:
                    return _model(row), True
                existing = await connection.fetchrow(
                    f"SELECT {_MODEL_COLUMNS} FROM models "
                    "WHERE entity = $1 AND project = $2 AND name = $3 AND deleted_at IS NULL",
                    entity,
                    project,
                    name,
                )
                if existing is None:
                    continue  # deleted since the conflict: the name is free again
                if return_existing:
                    return _model(existing), False
                raise ModelNameTaken(
                    f"A model named {name!r} already exists in project {project!r}"
                )

        return await self._run(work, idempotent=False)

    async def get_model(self, entity: str, model_id: str) -> Model:
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT {_MODEL_COLUMNS} FROM models "
                "WHERE id = $1::uuid AND entity = $2 AND deleted_at IS NULL",
                model_id,
                entity,
            )

        row = await self._run(work, idempotent=True)
        if row is None:
            raise ModelNotFound()
        return _model(row)

    async def list_models(
        self, entity: str, *, project: str | None, after: str | None, limit: int, order: Order
    ) -> ModelPage:
        if after is not None and canonical_uuid(after) is None:
            raise InvalidCursor("after is not the id of a model in this list")
        if not _storable(entity) or (project is not None and not _storable(project)):
            if after is not None:
                raise InvalidCursor("after is not the id of a model in this list")
            return ModelPage([], has_more=False)
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
                    raise InvalidCursor("after is not the id of a model in this list")
            args: list[object] = [entity, limit + 1, project]
            if after is not None:
                args.append(after)
            rows = await connection.fetch(
                f"SELECT {_MODEL_COLUMNS} FROM models "
                f"WHERE entity = $1 AND deleted_at IS NULL {project_filter} {seek} "
                f"ORDER BY created_at {direction}, id {direction} LIMIT $2",
                *args,
            )
            return ModelPage([_model(row) for row in rows[:limit]], has_more=len(rows) > limit)

        return await self._run(work, idempotent=True)

    async def delete_model(self, entity: str, model_id: str) -> int:
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()

        async def work(connection: Connection) -> int:
            async with connection.transaction():
                # Blocks writers holding the model FOR SHARE, so none adds a row after our deletes.
                found = await connection.fetchval(_LIVE_MODEL + " FOR UPDATE", model_id, entity)
                if found is None:
                    raise ModelNotFound()
                count = await connection.fetchval(
                    "WITH gone AS (DELETE FROM checkpoints WHERE model_id = $1::uuid RETURNING 1) "
                    "SELECT count(*) FROM gone",
                    model_id,
                )
                for table in ("checkpoint_metrics", "checkpoint_tombstones", "expired_cursors"):
                    await connection.execute(
                        f"DELETE FROM {table} WHERE model_id = $1::uuid", model_id
                    )
                await connection.execute(
                    "UPDATE models SET deleted_at = now() WHERE id = $1::uuid", model_id
                )
            return int(count)

        return await self._run(work, idempotent=False)

    # Checkpoints ----------------------------------------------------------------------------

    async def list_checkpoints(
        self, entity: str, model_id: str, *, after: str | None, limit: int, order: Order
    ) -> CheckpointPage:
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()
        cursor = None if after is None else canonical_uuid(after)
        query = _PAGE_QUERIES[(order, after is not None)]

        async def work(connection: Connection) -> Any:
            if after is None:
                return await connection.fetch(query, model_id, entity, limit + 1)
            # A malformed cursor must not reach PostgreSQL as a uuid: seek to no checkpoint.
            return await connection.fetch(query, model_id, entity, cursor, limit + 1)

        rows = await self._run(work, idempotent=True)
        head = rows[0]
        if not head["found"]:
            raise ModelNotFound()
        if not head["positioned"]:
            if head["expired"]:
                raise CursorExpired(
                    "after names a checkpoint deleted so long ago that its position was purged: "
                    "the cursor expired, start the walk again"
                )
            raise InvalidCursor("after is not the id of a checkpoint of this model")
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
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()
        if not _storable(*metrics):
            raise ValueError("metric names must not contain NUL characters or lone surrogates")
        metrics_json = encode_metrics(metrics)
        names, values = list(metrics), list(metrics.values())

        async def work(connection: Connection) -> tuple[Checkpoint, bool]:
            async with connection.transaction():
                # FOR SHARE: a concurrent delete_model waits for this registration (and vice versa).
                if await connection.fetchval(_LIVE_MODEL + " FOR SHARE", model_id, entity) is None:
                    raise ModelNotFound()
                while True:
                    # The unique index on (model_id, step) decides races between processes.
                    row = await connection.fetchrow(
                        "INSERT INTO checkpoints "
                        "(model_id, step, id, metrics, created_at, updated_at) "
                        "VALUES ($1::uuid, $2, $3::uuid, $4, now(), now()) "
                        f"ON CONFLICT (model_id, step) DO NOTHING RETURNING {_CHECKPOINT_COLUMNS}",
                        model_id,
                        step,
                        str(uuid.uuid4()),
                        metrics_json,
                    )
                    if row is not None:
                        await connection.execute(_UPSERT_METRICS, model_id, step, names, values)
                        return _checkpoint(row), True
                    existing = await connection.fetchrow(
                        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints "
                        "WHERE model_id = $1::uuid AND step = $2",
                        model_id,
                        step,
                    )
                    if existing is None:
                        continue  # deleted since the conflict: the step is free again
                    if orjson.loads(existing["metrics"]) != metrics:
                        raise StepConflict(
                            f"Step {step} already has a checkpoint with different metrics"
                        )
                    return _checkpoint(existing), False

        return await self._run(work, idempotent=False)

    async def get_checkpoint(self, entity: str, model_id: str, checkpoint_id: str) -> Checkpoint:
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()
        wanted = canonical_uuid(checkpoint_id)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(
                f"SELECT m.found, c.{', c.'.join(_CHECKPOINT_COLUMNS.split(', '))} "
                "FROM (SELECT EXISTS (" + _LIVE_MODEL + ") AS found) m "
                "LEFT JOIN checkpoints c ON m.found AND c.id = $3::uuid AND c.model_id = $1::uuid",
                model_id,
                entity,
                wanted,
            )

        row = await self._run(work, idempotent=True)
        if not row["found"]:
            raise ModelNotFound()
        if row["id"] is None:
            raise CheckpointNotFound()
        return _checkpoint(row)

    async def update_metrics(
        self, entity: str, model_id: str, checkpoint_id: str, metrics: dict[str, float]
    ) -> Checkpoint:
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()
        if not _storable(*metrics):
            raise ValueError("metric names must not contain NUL characters or lone surrogates")
        wanted = canonical_uuid(checkpoint_id)
        names, values = list(metrics), list(metrics.values())

        async def work(connection: Connection) -> Checkpoint:
            async with connection.transaction():
                if await connection.fetchval(_LIVE_MODEL + " FOR SHARE", model_id, entity) is None:
                    raise ModelNotFound()
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
                merged = orjson.loads(current["metrics"]) | metrics
                if len(merged) > MAX_METRICS:
                    raise TooManyMetrics(
                        f"the merge would leave the checkpoint with {len(merged)} metrics; "
                        f"at most {MAX_METRICS} are allowed"
                    )
                row = await connection.fetchrow(
                    "UPDATE checkpoints SET metrics = $1, updated_at = now() "
                    "WHERE id = $2::uuid AND model_id = $3::uuid "
                    f"RETURNING {_CHECKPOINT_COLUMNS}",
                    encode_metrics(merged),
                    wanted,
                    model_id,
                )
                await connection.execute(_UPSERT_METRICS, model_id, current["step"], names, values)
            return _checkpoint(row)

        return await self._run(work, idempotent=False)

    async def delete_checkpoints(
        self, entity: str, model_id: str, steps: list[int]
    ) -> DeleteResult:
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()
        requested = list(dict.fromkeys(steps))
        # Steps outside bigint cannot exist; keep them away from PostgreSQL.
        candidates = [step for step in requested if 0 <= step <= MAX_STEP]

        async def work(connection: Connection) -> set[int]:
            async with connection.transaction():
                if await connection.fetchval(_LIVE_MODEL + " FOR SHARE", model_id, entity) is None:
                    raise ModelNotFound()
                if not candidates:
                    return set()
                # Lock first, delete in a later statement: its fresh snapshot then sees the metric
                # rows of any PATCH that committed while we waited, and deletes them too.
                await connection.execute(
                    "SELECT 1 FROM checkpoints WHERE model_id = $1::uuid AND step = ANY($2::bigint[]) "
                    "FOR UPDATE",
                    model_id,
                    candidates,
                )
                return await _delete_steps(connection, model_id, candidates)

        deleted = await self._run(work, idempotent=False)
        return DeleteResult(len(deleted), [step for step in requested if step not in deleted])

    async def best_checkpoint(
        self, entity: str, model_id: str, metric: str, mode: Mode
    ) -> Checkpoint:
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()
        storable = _storable(metric)

        async def work(connection: Connection) -> Any:
            async with connection.transaction(readonly=True):
                if await connection.fetchval(_LIVE_MODEL, model_id, entity) is None:
                    raise ModelNotFound()
                if not storable:
                    return None
                return await connection.fetchrow(_BEST_ONE[mode], model_id, metric)

        row = await self._run(work, idempotent=True)
        if row is None:
            raise MetricNotFound(f"No checkpoint of this model has the metric {metric!r}")
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
        if canonical_uuid(model_id) is None or not _storable(entity):
            raise ModelNotFound()
        best_storable = keep_best is not None and _storable(keep_best.metric)

        async def work(connection: Connection) -> RetentionResult:
            async with connection.transaction():
                if await connection.fetchval(_LIVE_MODEL + " FOR SHARE", model_id, entity) is None:
                    raise ModelNotFound()
                # Lock the rows we decide on: a concurrent delete waits, so the report is exact;
                # checkpoints registered meanwhile are not in this list and are never deleted.
                steps = [
                    int(row["step"])
                    for row in await connection.fetch(
                        "SELECT step FROM checkpoints WHERE model_id = $1::uuid "
                        "ORDER BY step FOR UPDATE",
                        model_id,
                    )
                ]
                keep = set(steps[-max(keep_latest, 1) :]) if steps else set()
                if keep_best is not None and keep_best.k > 0 and best_storable:
                    rows = await connection.fetch(
                        _BEST_STEPS[keep_best.mode], model_id, keep_best.metric, keep_best.k
                    )
                    keep.update(int(row["step"]) for row in rows)
                deleted = [step for step in steps if step not in keep]
                if not dry_run and deleted:
                    await _delete_steps(connection, model_id, deleted)
            return RetentionResult(sorted(keep), deleted)

        return await self._run(work, idempotent=dry_run)

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

        return await self._run(work, idempotent=False)
