"""Many checkpoints written straight into a test database, SQLite or PostgreSQL, as the backends
store them: 100,000 take a second or two instead of minutes of HTTP requests."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson

from ckpt_registry.contract import TIMESTAMP_FORMAT
from ckpt_registry.storage.urls import postgres_dsn

# The curve every bulk model has: a noisy decreasing loss with one deep dip and one high spike, so
# a downsampled series can be checked for keeping both.
LOW_STEP = 54_321
HIGH_STEP = 12_345


def loss_at(step: int) -> float:
    if step == LOW_STEP:
        return -5.0
    if step == HIGH_STEP:
        return 50.0
    return 1.0 / (1 + step / 1000) + 0.01 * math.sin(step)


def metrics_at(step: int) -> dict[str, float]:
    return {"loss": loss_at(step), "reward": (step * 7919) % 1000 / 1000}


def bulk_load(database_url: str, model_id: str, count: int) -> None:
    """Checkpoints at steps 0..count-1 with the metrics `metrics_at(step)`."""
    rows = [(step, str(uuid.UUID(int=(1 << 62) | step)), metrics_at(step)) for step in range(count)]
    if database_url.startswith("sqlite"):
        _load_sqlite(database_url.removeprefix("sqlite:///"), model_id, rows)
    else:
        asyncio.run(_load_postgres(database_url, model_id, rows))


Rows = list[tuple[int, str, dict[str, float]]]


def _load_sqlite(path: str, model_id: str, rows: Rows) -> None:
    now = datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
    db = sqlite3.connect(path, timeout=10)
    try:
        with db:
            db.executemany(
                "INSERT INTO checkpoints (model_id, step, id, metrics, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(model_id, s, i, orjson.dumps(m).decode(), now, now) for s, i, m in rows],
            )
            db.executemany(
                "INSERT INTO checkpoint_metrics (model_id, name, step, value) VALUES (?, ?, ?, ?)",
                [(model_id, n, s, v) for s, _, m in rows for n, v in m.items()],
            )
    finally:
        db.close()


async def _load_postgres(url: str, model_id: str, rows: Rows) -> None:
    now = datetime.now(UTC)
    model = uuid.UUID(model_id)
    connection = await asyncpg.connect(postgres_dsn(url))
    try:
        async with connection.transaction():
            await connection.copy_records_to_table(
                "checkpoints",
                records=[
                    (model, s, uuid.UUID(i), orjson.dumps(m).decode(), now, now) for s, i, m in rows
                ],
                columns=["model_id", "step", "id", "metrics", "created_at", "updated_at"],
            )
            await connection.copy_records_to_table(
                "checkpoint_metrics",
                records=[(model, n, s, v) for s, _, m in rows for n, v in m.items()],
                columns=["model_id", "name", "step", "value"],
            )
        await connection.execute("ANALYZE checkpoints, checkpoint_metrics")
    finally:
        await connection.close()
