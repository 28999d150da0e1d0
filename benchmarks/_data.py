"""Build the list benchmark's data: one model with N checkpoints, on SQLite or PostgreSQL, cached.

The schema comes from the migrations, the key and the model from the project's storage, and every
bulk statement from the SQLAlchemy metadata the migrations are checked against (storage/schema.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
import orjson
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.sql.compiler import SQLCompiler

from _common import OUT, log
from ckpt_registry.contract import LIST_LIMIT_DEFAULT, TIMESTAMP_FORMAT
from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import open_storage, schema
from ckpt_registry.storage.base import encode_metrics
from ckpt_registry.storage.migrate import alembic_config, downgrade, upgrade
from ckpt_registry.storage.urls import postgres_dsn, sqlite_path

ENTITY = "default"
PROJECT = "benchmarks"
BASE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
METRIC_NAMES = ("loss", "accuracy", "reward", "kl", "learning_rate")

# The dialects the statements are compiled for: the ones our storage's drivers speak.
SQLITE = sqlite.dialect()
POSTGRES = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


@dataclass
class Dataset:
    """A built model: where it lives, its id, a key for it and how many checkpoints it holds."""

    database_url: str
    model_id: str
    key: str
    rows: int
    build_seconds: float
    reused: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


# Rows, checked against the schema ------------------------------------------------------------


class SchemaMismatch(RuntimeError):
    """The benchmark's rows no longer fit the schema: update benchmarks/_data.py with it."""


def columns_to_fill(table: sa.Table, provided: Iterable[str]) -> list[str]:
    """`provided`, in the table's column order, once checked against the table's metadata.

    A column the table no longer has (renamed or dropped) or a NOT NULL column without a default
    that the benchmark leaves out (added) stops the build here, before any row is written, instead
    of yielding a database the server reads differently from one it wrote itself.
    """
    given = set(provided)
    unknown = given - set(table.c.keys())
    required = {
        column.name
        for column in table.c
        if not column.nullable and column.default is None and column.server_default is None
    }
    missing = required - given
    if unknown or missing:
        problems = [
            f"it has no column {', '.join(sorted(unknown))}" if unknown else "",
            f"NOT NULL columns left empty: {', '.join(sorted(missing))}" if missing else "",
        ]
        raise SchemaMismatch(
            f"the benchmark's {table.name} rows no longer fit storage/schema.py "
            f"({'; '.join(filter(None, problems))}): update benchmarks/_data.py"
        )
    return [column.name for column in table.c if column.name in given]


def metrics(rng: random.Random, step: int, rows: int) -> dict[str, float]:
    """Plausible training curves, so "best by metric" has a real answer to find."""
    progress = step / max(rows, 1)
    return {
        "loss": 2.5 * (1 - progress) + rng.random() * 0.1,
        "accuracy": 0.5 + 0.45 * progress + rng.random() * 0.01,
        "reward": rng.gauss(progress, 0.1),
        "kl": rng.random() * 0.05,
        "learning_rate": 3e-4 * (1 - progress),
    }


def checkpoint_records(
    model_id: str, rows: int, timestamp: Callable[[datetime], object]
) -> Iterator[dict[str, object]]:
    """The checkpoints table's rows by column name; `timestamp` turns a UTC datetime into what the
    driver stores (contract text for SQLite, the datetime itself for asyncpg)."""
    # Rows by name, put in the statement's order by `itemgetter`, cost ~1.3 s per 1M rows over
    # plain tuples (12.7 against 11.5 s to generate): the price of checking them against the schema.
    rng = random.Random(rows)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for step in range(rows):
        stamp = timestamp(start + timedelta(seconds=step))
        yield {
            "model_id": model_id,
            "step": step,
            "id": str(uuid.uuid4()),
            "metrics": encode_metrics(metrics(rng, step, rows)),
            "created_at": stamp,
            "updated_at": stamp,
        }


def checked(
    table: sa.Table, records: Iterator[dict[str, object]]
) -> tuple[list[str], Iterator[dict[str, object]]]:
    """The columns the records fill (checked by `columns_to_fill` on the first) and the records."""
    first = next(records)
    return columns_to_fill(table, first), chain([first], records)


def metric_rows_statement(dialect: sa.Dialect, model_id: str) -> sa.Insert:
    """`checkpoint_metrics` rows derived from the stored JSON of the model's checkpoints, so the
    index "best by metric" reads always agrees with the documents."""
    checkpoints, metric_rows = schema.checkpoints, schema.checkpoint_metrics
    value: sa.ColumnElement[Any]
    if dialect.name == "sqlite":
        each = sa.func.json_each(checkpoints.c.metrics).table_valued("key", "value")
        value = each.c.value
    else:
        each = sa.func.jsonb_each_text(
            sa.cast(checkpoints.c.metrics, postgresql.JSONB)
        ).table_valued("key", "value")
        value = sa.cast(each.c.value, metric_rows.c.value.type)
    select = sa.select(checkpoints.c.model_id, each.c.key, checkpoints.c.step, value).where(
        checkpoints.c.model_id == model_id
    )
    columns = [metric_rows.c.model_id, metric_rows.c.name, metric_rows.c.step, metric_rows.c.value]
    columns_to_fill(metric_rows, (column.name for column in columns))
    return sa.insert(metric_rows).from_select(columns, select)


def insert_statement(
    table: sa.Table, columns: list[str], dialect: sa.Dialect
) -> tuple[str, list[str]]:
    """An INSERT of `columns` into the table for `dialect`, and its parameters' names in order."""
    result = sa.insert(table).compile(dialect=dialect, column_keys=columns)
    return str(result), list(result.positiontup or [])


def expanded(statement: sa.ClauseElement, dialect: sa.Dialect) -> tuple[str, list[Any]]:
    """The statement's SQL for `dialect` with any `IN` list spelled out, and its bound values as
    positional arguments.

    The values go to the driver as they are: SQLAlchemy's own processing would write a `Uuid` as 32
    hex digits on SQLite, where the registry stores the canonical text with dashes.
    """
    result = cast(
        SQLCompiler,
        statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}),
    )
    return str(result), [result.params[name] for name in result.positiontup or []]


# The key and the model, through the project's storage ----------------------------------------


async def create_key_and_model(url: str, rows: int) -> tuple[str, str]:
    """A new API key (the key itself) and the benchmark model's id, made as `ckpt` makes them."""
    storage = open_storage(url)
    await storage.open()
    try:
        key = generate_key()
        await storage.create_key(ENTITY, "benchmark", hash_key(key))
        model, _ = await storage.create_model(
            ENTITY, PROJECT, f"list-{rows}", BASE_MODEL, return_existing=False
        )
    finally:
        await storage.close()
    return key, model.id


async def check_through_storage(url: str, model_id: str, rows: int) -> None:
    """Read the built model back through the project's storage: the first and the last page, one
    checkpoint in full and the best by a metric (the `checkpoint_metrics` rows). Milliseconds, and
    a column the server reads but the build left wrong fails here rather than mid-benchmark."""
    storage = open_storage(url)
    await storage.open()
    try:
        limit = min(LIST_LIMIT_DEFAULT, rows)
        first = await storage.list_checkpoints(
            ENTITY, model_id, after=None, limit=limit, order="asc"
        )
        last = await storage.list_checkpoints(
            ENTITY, model_id, after=None, limit=limit, order="desc"
        )
        checkpoint = await storage.get_checkpoint(ENTITY, model_id, first.data[0][0])
        best = await storage.best_checkpoint(ENTITY, model_id, "accuracy", "max")
    finally:
        await storage.close()
    problems = [
        f"first step {first.data[0][1]}, not 0" if first.data[0][1] != 0 else "",
        f"last step {last.data[0][1]}, not {rows - 1}" if last.data[0][1] != rows - 1 else "",
        "stored metrics do not decode to the metric names"
        if tuple(orjson.loads(checkpoint.metrics_json)) != METRIC_NAMES
        else "",
        "the best checkpoint is not in the model" if not 0 <= best.step < rows else "",
    ]
    if any(problems):
        raise SchemaMismatch(
            "the built model reads back wrong: " + "; ".join(filter(None, problems))
        )


# The cache ------------------------------------------------------------------------------------


def head_revision(url: str) -> str:
    """The Alembic head: a cached database built at another revision is built again."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def sidecar_path(name: str) -> Path:
    return OUT / f"{name}.json"


def cached(sidecar: Path, revision: str, database_revision: str | None) -> dict[str, Any] | None:
    """The sidecar's record when the data it describes was built at `revision`, else None."""
    if not sidecar.exists():
        return None
    meta: dict[str, Any] = json.loads(sidecar.read_text())
    if meta.get("revision") == revision == database_revision:
        return meta
    log(
        f"the cached data was built at revision {meta.get('revision')} (database at "
        f"{database_revision}); the migrations' head is {revision}: building again"
    )
    return None


def write_sidecar(sidecar: Path, data: Dataset, revision: str) -> None:
    sidecar.write_text(
        json.dumps(
            {
                "model_id": data.model_id,
                "key": data.key,
                "build_seconds": data.build_seconds,
                "revision": revision,
            }
        )
    )


# SQLite ---------------------------------------------------------------------------------------


def sqlite_revision(path: Path) -> str | None:
    if not path.exists():
        return None
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return str(row[0]) if row else None


def build_sqlite(rows: int, rebuild: bool) -> Dataset:
    path = OUT / f"list-{rows}.sqlite"
    sidecar = sidecar_path(path.name)
    database_url = f"sqlite:///{path}"
    revision = head_revision(database_url)
    meta = None if rebuild else cached(sidecar, revision, sqlite_revision(path))
    if meta is not None:
        log(f"reusing {path} (built in {meta['build_seconds']:.1f} s; --rebuild to build again)")
        data = Dataset(
            database_url, meta["model_id"], meta["key"], rows, meta["build_seconds"], True
        )
        asyncio.run(check_through_storage(database_url, data.model_id, rows))
        return data

    log(f"building {rows:,} checkpoints on SQLite at {path} (schema at revision {revision})")
    began = time.perf_counter()
    building = path.with_name(path.name + ".building")
    for stale in (path, building):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{stale}{suffix}").unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    building_url = f"sqlite:///{building}"
    upgrade(building_url)
    key, model_id = asyncio.run(create_key_and_model(building_url, rows))
    load_sqlite(sqlite_path(building_url), model_id, rows)
    building.rename(path)
    data = Dataset(database_url, model_id, key, rows, time.perf_counter() - began)
    asyncio.run(check_through_storage(database_url, model_id, rows))
    write_sidecar(sidecar, data, revision)
    log(
        f"built {rows:,} checkpoints ({rows * len(METRIC_NAMES):,} metric rows) "
        f"in {data.build_seconds:.1f} s"
    )
    return data


def load_sqlite(path: Path, model_id: str, rows: int) -> None:
    """The checkpoints and their metric rows, in one transaction on the raw sqlite3 module: the
    storage's one-row-at-a-time path would take ~10x as long at 1M rows."""
    dialect = SQLITE
    checkpoints, metric_rows = schema.checkpoints, schema.checkpoint_metrics
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # Durability is irrelevant while building a benchmark file: no journal, no fsync, a big
        # cache (the storage left the file in WAL mode; no other connection is open now).
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -1000000")
        db.execute("PRAGMA temp_store = MEMORY")
        # Secondary indexes are built once after the load (a sort) instead of row by row (random
        # inserts into a growing b-tree); their DDL comes from the migrated schema itself.
        indexes = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            "AND tbl_name IN (?, ?)",
            (checkpoints.name, metric_rows.name),
        ).fetchall()
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')

        def text(moment: datetime) -> str:
            return moment.strftime(TIMESTAMP_FORMAT)

        columns, records = checked(checkpoints, checkpoint_records(model_id, rows, text))
        insert, parameters = insert_statement(checkpoints, columns, dialect)
        db.execute("BEGIN")
        db.executemany(insert, map(itemgetter(*parameters), records))
        db.execute(*expanded(metric_rows_statement(dialect, model_id), dialect))
        for _, sql in indexes:
            db.execute(sql)
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()


# PostgreSQL -----------------------------------------------------------------------------------


async def ensure_postgres_database(url: str) -> None:
    dsn = postgres_dsn(url)
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        name = make_url(url).database
        admin = await asyncpg.connect(
            postgres_dsn(
                make_url(url).set(database="postgres").render_as_string(hide_password=False)
            )
        )
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    else:
        await conn.close()


async def postgres_state(url: str, model_id: str) -> tuple[str | None, int | None]:
    """The database's Alembic revision and the model's checkpoint count (None when unknown)."""
    conn = await asyncpg.connect(postgres_dsn(url))
    try:
        revision = await conn.fetchval("SELECT version_num FROM alembic_version")
        count_sql, arguments = expanded(
            sa.select(sa.func.count())
            .select_from(schema.checkpoints)
            .where(schema.checkpoints.c.model_id == model_id),
            POSTGRES,
        )
        count = await conn.fetchval(count_sql, *arguments)
        return str(revision), int(count)
    except (asyncpg.PostgresError, ValueError):
        return None, None
    finally:
        await conn.close()


def build_postgres(url: str, rows: int, rebuild: bool) -> Dataset:
    name = re.sub(r"[^A-Za-z0-9]+", "-", url.split("@")[-1]).strip("-")
    sidecar = sidecar_path(f"list-{rows}.pg-{name}")
    revision = head_revision(url)
    asyncio.run(ensure_postgres_database(url))
    meta = None
    if sidecar.exists() and not rebuild:
        model_id = json.loads(sidecar.read_text())["model_id"]
        database_revision, count = asyncio.run(postgres_state(url, model_id))
        meta = cached(sidecar, revision, database_revision) if count == rows else None
    if meta is not None:
        log(
            f"reusing the PostgreSQL model {meta['model_id']} ({rows:,} rows; --rebuild to build again)"
        )
        data = Dataset(url, meta["model_id"], meta["key"], rows, meta["build_seconds"], True)
        asyncio.run(check_through_storage(url, data.model_id, rows))
        return data
    log(
        f"building {rows:,} checkpoints on PostgreSQL at revision {revision} "
        "(the benchmark database's tables are recreated)"
    )
    began = time.perf_counter()
    sidecar.unlink(missing_ok=True)
    downgrade(url, "base")
    upgrade(url)
    key, model_id = asyncio.run(create_key_and_model(url, rows))
    asyncio.run(load_postgres(url, model_id, rows))
    data = Dataset(url, model_id, key, rows, time.perf_counter() - began)
    asyncio.run(check_through_storage(url, model_id, rows))
    write_sidecar(sidecar, data, revision)
    log(f"built {rows:,} checkpoints on PostgreSQL in {data.build_seconds:.1f} s")
    return data


async def load_postgres(url: str, model_id: str, rows: int) -> None:
    """The checkpoints by COPY, their metric rows derived by one INSERT ... SELECT, then ANALYZE."""
    checkpoints = schema.checkpoints
    conn = await asyncpg.connect(postgres_dsn(url))
    try:
        async with conn.transaction():
            columns, records = checked(
                checkpoints, checkpoint_records(model_id, rows, lambda moment: moment)
            )
            await conn.copy_records_to_table(
                checkpoints.name, records=map(itemgetter(*columns), records), columns=columns
            )
            dialect = POSTGRES
            derive, arguments = expanded(metric_rows_statement(dialect, model_id), dialect)
            await conn.execute(derive, *arguments)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def checkpoint_ids(data: Dataset, steps: list[int]) -> list[str]:
    """The ids of the benchmark model's checkpoints at `steps`, in that order."""
    checkpoints = schema.checkpoints
    query = sa.select(checkpoints.c.step, sa.cast(checkpoints.c.id, sa.Text)).where(
        checkpoints.c.model_id == data.model_id, checkpoints.c.step.in_(steps)
    )
    if data.is_sqlite:
        db = sqlite3.connect(sqlite_path(data.database_url))
        try:
            sql, arguments = expanded(query, SQLITE)
            found = dict(db.execute(sql, arguments).fetchall())
        finally:
            db.close()
    else:

        async def fetch() -> dict[int, str]:
            conn = await asyncpg.connect(postgres_dsn(data.database_url))
            try:
                sql, arguments = expanded(query, POSTGRES)
                return dict(await conn.fetch(sql, *arguments))
            finally:
                await conn.close()

        found = asyncio.run(fetch())
    return [found[step] for step in steps]
