"""What a model's metric names and a page of its deleted steps cost on a 100,000-checkpoint model,
without and with migration 0005, in the same run: median and p95 per call, and the ratios.

    .venv/bin/python benchmarks/index_reads.py [--rows 100000] [--calls 30]
        [--postgres-url postgresql://.../ckpt_bench]

Per backend, two fresh databases: one at revision 0004 (before), one at the head, each with one model
of `rows` checkpoints x 5 metrics (the list benchmark's data, benchmarks/_data.py).

- Metric names, with every checkpoint live: the storage's `list_metric_names` (what the route calls),
  and the statement it runs (a loose index scan) beside `SELECT DISTINCT name`, on one connection.
- Deleted steps, after retention (`apply_retention`, keeping the latest 1%) moved the rest to the
  tombstones: `list_deleted_steps` (a first page of 1,000) and its statement, at each revision.

The PostgreSQL databases (the URL's, and its name + `_0004`) have their tables recreated.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from _common import OUT, log
from _data import create_key_and_model, ensure_postgres_database, load_postgres, load_sqlite
from ckpt_registry.contract import DELETED_STEPS_LIMIT_DEFAULT, METRIC_NAMES_LIMIT_DEFAULT
from ckpt_registry.storage import Storage, open_storage
from ckpt_registry.storage.migrate import downgrade, upgrade
from ckpt_registry.storage.postgres.queries import DELETED_STEPS, METRIC_NAMES
from ckpt_registry.storage.sqlite import SQLiteStorage
from ckpt_registry.storage.urls import postgres_dsn, sqlite_path

ENTITY = "default"
# The revision before the tombstones' (model_id, step) index and the metric names' collation.
BEFORE = "0004"
DISTINCT = "SELECT DISTINCT name FROM checkpoint_metrics WHERE model_id = {} ORDER BY name"
NAMES, PAGE = METRIC_NAMES_LIMIT_DEFAULT, DELETED_STEPS_LIMIT_DEFAULT
Timings = dict[str, list[float]]


def build(url: str, rows: int, revision: str) -> str:
    """A fresh database at `revision` with the model loaded; the model's id."""
    if url.startswith("sqlite"):
        sqlite_path(url).unlink(missing_ok=True)
    else:
        asyncio.run(ensure_postgres_database(url))
        downgrade(url, "base")
    upgrade(url)
    if revision != "head":
        downgrade(url, revision)
    _, model_id = asyncio.run(create_key_and_model(url, rows))
    if url.startswith("sqlite"):
        load_sqlite(sqlite_path(url), model_id, rows)
    else:
        asyncio.run(load_postgres(url, model_id, rows))
    return model_id


async def timed(call: Callable[[], Awaitable[Any]], calls: int) -> list[float]:
    await call()  # warm the caches once
    spent = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        spent.append((time.perf_counter() - start) * 1000)
    return spent


class Statements:
    """Runs SQL on the storage's own SQLite connection, or on one PostgreSQL connection."""

    def __init__(self, storage: Storage, url: str) -> None:
        self.storage, self.url = storage, url
        self.pg: Any = None

    async def __aenter__(self) -> Statements:
        if not isinstance(self.storage, SQLiteStorage):
            self.pg = await asyncpg.connect(postgres_dsn(self.url))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.pg is not None:
            await self.pg.close()

    async def run(self, sql: str, *args: Any) -> None:
        if self.pg is not None:
            await self.pg.fetch(sql, *args)
        else:
            assert isinstance(self.storage, SQLiteStorage)
            self.storage.db.execute(sql, args).fetchall()


async def traced(storage: Storage, call: Callable[[], Awaitable[Any]], table: str) -> str:
    """The statement (parameters bound) on `table` that `call` runs on the SQLite storage."""
    assert isinstance(storage, SQLiteStorage)
    seen: list[str] = []
    connect = storage.connect

    def traced_connect(path: Path) -> sqlite3.Connection:  # reads that run on a thread
        connection = connect(path)
        connection.set_trace_callback(seen.append)
        return connection

    storage.db.set_trace_callback(seen.append)
    storage.connect = traced_connect  # type: ignore[method-assign]
    try:
        await call()
    finally:
        storage.db.set_trace_callback(None)
        storage.connect = connect  # type: ignore[method-assign]
    return next(sql for sql in seen if table in sql)


async def measure_names(url: str, model_id: str, calls: int) -> Timings:
    storage = open_storage(url)
    await storage.open()
    try:

        async def names() -> Any:
            return await storage.list_metric_names(ENTITY, model_id, after=None, limit=NAMES)

        assert len((await names()).data) == 5
        async with Statements(storage, url) as statements:
            if statements.pg is None:
                loose, loose_args = await traced(storage, names, "checkpoint_metrics"), ()
                distinct: tuple[Any, ...] = (DISTINCT.format("?"), model_id)
            else:
                loose, loose_args = METRIC_NAMES, (model_id, "", NAMES)
                distinct = (DISTINCT.format("$1::uuid"), model_id)
            return {
                "storage": await timed(names, calls),
                "loose": await timed(lambda: statements.run(loose, *loose_args), calls),
                "distinct": await timed(lambda: statements.run(*distinct), calls),
            }
    finally:
        await storage.close()


async def measure_deleted(url: str, model_id: str, rows: int, calls: int) -> Timings:
    storage = open_storage(url)
    await storage.open()
    try:
        await storage.apply_retention(
            ENTITY, model_id, keep_latest=rows // 100, keep_best=None, dry_run=False
        )
        async with Statements(storage, url) as statements:
            await statements.run("ANALYZE")  # the planner's statistics after a delete of 99%

            async def page() -> Any:
                return await storage.list_deleted_steps(
                    ENTITY, model_id, after_step=None, limit=PAGE
                )

            assert len((await page()).data) == PAGE
            if statements.pg is None:
                sql = await traced(storage, page, "checkpoint_tombstones")
                args: tuple[Any, ...] = ()
            else:
                sql, args = DELETED_STEPS, (model_id, -1, PAGE + 1)
            return {
                "storage": await timed(page, calls),
                "statement": await timed(lambda: statements.run(sql, *args), calls),
            }
    finally:
        await storage.close()


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values):8.2f} ms  p95 {p95:8.2f} ms"


def run(label: str, before_url: str, head_url: str, rows: int, calls: int) -> None:
    log(f"{label}: building {rows:,} checkpoints at revision {BEFORE} and at the head")
    before_model, head_model = build(before_url, rows, BEFORE), build(head_url, rows, "head")
    names = asyncio.run(measure_names(head_url, head_model, calls))
    log(f"{label}: retention keeps the latest {rows // 100:,} at both revisions")
    before = asyncio.run(measure_deleted(before_url, before_model, rows, calls))
    head = asyncio.run(measure_deleted(head_url, head_model, rows, calls))
    median = statistics.median
    print(f"{label:10s} metric names, list_metric_names  {summary(names['storage'])}")
    print(f"{label:10s} metric names, its statement      {summary(names['loose'])}")
    print(f"{label:10s} metric names, DISTINCT instead   {summary(names['distinct'])}")
    print(f"{label:10s} deleted steps page at {BEFORE}       {summary(before['storage'])}")
    print(f"{label:10s} deleted steps page at head       {summary(head['storage'])}")
    print(f"{label:10s}   its statement at {BEFORE}          {summary(before['statement'])}")
    print(f"{label:10s}   its statement at head          {summary(head['statement'])}")
    print(
        f"{label:10s} DISTINCT / names statement {median(names['distinct']) / median(names['loose']):7.1f}x"
        f"   deleted steps {BEFORE} / head: page "
        f"{median(before['storage']) / median(head['storage']):5.1f}x, statement "
        f"{median(before['statement']) / median(head['statement']):5.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--postgres-url", help="also measure on this PostgreSQL database")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    sqlite = [f"sqlite:///{OUT / f'index-reads-{name}.db'}" for name in (BEFORE, "head")]
    run("sqlite", *sqlite, args.rows, args.calls)
    if args.postgres_url:
        run("postgresql", f"{args.postgres_url}_{BEFORE}", args.postgres_url, args.rows, args.calls)


if __name__ == "__main__":
    main()
