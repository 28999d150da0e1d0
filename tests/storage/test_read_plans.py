"""A model of 100,000 checkpoints of which retention deleted 99,000: its metric names and a page of its
deleted steps are read from indexes, never from every row of the model. Shown with EXPLAIN on both
databases, of the statements the backends run (docs/design.md, migration 0005)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ckpt_registry.storage import open_storage
from ckpt_registry.storage.postgres.queries import DELETED_STEPS, METRIC_NAMES
from ckpt_registry.storage.sqlite import SQLiteStorage
from ckpt_registry.storage.urls import postgres_dsn, sqlite_path

from ..bulk import bulk_load

CHECKPOINTS = 100_000
DELETED = 99_000  # steps 0..98,999, as retention keeping the latest 1,000 leaves them
PAGE = 1000


def big_model(database_url: str) -> str:
    """The model's id, its checkpoints loaded and the first 99,000 moved to the tombstones."""

    async def create() -> str:
        storage = open_storage(database_url)
        await storage.open()
        try:
            model, _ = await storage.create_model("e", "p", "big", "b", return_existing=False)
        finally:
            await storage.close()
        return model.id

    model_id = asyncio.run(create())
    bulk_load(database_url, model_id, CHECKPOINTS)
    moves = [
        "INSERT INTO checkpoint_tombstones (id, model_id, step, deleted_at) "
        f"SELECT id, model_id, step, {{now}} FROM checkpoints WHERE step < {DELETED}",
        f"DELETE FROM checkpoint_metrics WHERE step < {DELETED}",
        f"DELETE FROM checkpoints WHERE step < {DELETED}",
        "ANALYZE",
    ]
    if database_url.startswith("sqlite"):
        db = sqlite3.connect(sqlite_path(database_url))
        with db:
            for sql in moves:
                db.execute(sql.format(now="'2026-01-01T00:00:00.000000Z'"))
        db.close()
    else:

        async def move() -> None:
            connection = await asyncpg.connect(postgres_dsn(database_url))
            try:
                for sql in moves:
                    await connection.execute(sql.format(now="now()"))
            finally:
                await connection.close()

        asyncio.run(move())
    return model_id


def trace_every_connection(storage: SQLiteStorage, trace: Callable[[str], None]) -> None:
    """Trace the storage's read connection and each one it opens for a read on a thread."""
    storage.db.set_trace_callback(trace)
    connect = storage.connect

    def traced(path: Path) -> sqlite3.Connection:
        connection = connect(path)
        connection.set_trace_callback(trace)
        return connection

    storage.connect = traced  # type: ignore[method-assign]


def read_both(database_url: str, model_id: str, trace: Any = None) -> tuple[Any, Any]:
    async def run() -> tuple[Any, Any]:
        storage = open_storage(database_url)
        await storage.open()
        try:
            if trace is not None:
                assert isinstance(storage, SQLiteStorage)
                trace_every_connection(storage, trace)
            names = await storage.list_metric_names("e", model_id, after=None, limit=PAGE)
            deleted = await storage.list_deleted_steps("e", model_id, after_step=None, limit=PAGE)
        finally:
            await storage.close()
        return names, deleted

    return asyncio.run(run())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_reads_names_and_deleted_steps_from_indexes(database_url: str) -> None:
    model_id = big_model(database_url)
    statements: list[str] = []

    names, deleted = read_both(database_url, model_id, statements.append)

    assert (names.data, names.has_more) == (["loss", "reward"], False)
    assert [item.step for item in deleted.data] == list(range(PAGE)) and deleted.has_more
    db = sqlite3.connect(sqlite_path(database_url))
    plans = {
        sql: [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        for sql in statements
        if "checkpoint_metrics" in sql or "checkpoint_tombstones" in sql
    }
    db.close()
    assert len(plans) == 2, statements
    for sql, plan in plans.items():
        # SEARCH is a seek into an index; a SCAN of a table or index reads all of it, and a temp
        # B-tree sorts everything it is given. (`names` is the query's own recursive CTE.)
        scans = [line for line in plan if line.startswith("SCAN") and line != "SCAN names"]
        assert not [line for line in scans if line != "SCAN CONSTANT ROW"], (sql, plan)
        assert not any("TEMP B-TREE" in line for line in plan), (sql, plan)
    assert any(
        "COVERING INDEX ix_checkpoint_tombstones_model_step (model_id=? AND step>?)" in line
        for plan in plans.values()
        for line in plan
    ), plans


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_reads_names_and_deleted_steps_from_indexes(database_url: str) -> None:
    model_id = big_model(database_url)

    names, deleted = read_both(database_url, model_id)

    assert (names.data, names.has_more) == (["loss", "reward"], False)
    assert [item.step for item in deleted.data] == list(range(PAGE)) and deleted.has_more

    async def explain() -> dict[str, str]:
        connection = await asyncpg.connect(postgres_dsn(database_url))
        try:
            plans = {}
            for name, sql, args in (
                ("names", METRIC_NAMES, (model_id, "", PAGE)),
                ("deleted", DELETED_STEPS, (model_id, -1, PAGE + 1)),
            ):
                rows = await connection.fetch(f"EXPLAIN {sql}", *args)
                plans[name] = "\n".join(row[0] for row in rows)
            return plans
        finally:
            await connection.close()

    plans = asyncio.run(explain())
    for plan in plans.values():
        assert "Seq Scan" not in plan and "Sort" not in plan, plan
    assert "checkpoint_metrics_pkey" in plans["names"], plans["names"]
    assert "ix_checkpoint_tombstones_model_step" in plans["deleted"], plans["deleted"]
