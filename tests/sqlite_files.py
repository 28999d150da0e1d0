"""SQLite files for fault tests: a fresh migrated copy, many checkpoints written straight into it, and
the rows a model has in each table."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import orjson

TIMESTAMP = "2026-01-01T00:00:00.000000Z"
# Every table holding rows of a model.
MODEL_TABLES = ("checkpoints", "checkpoint_metrics", "checkpoint_tombstones", "expired_cursors")


def fresh_copy(template: Path, directory: Path, name: str = "ckpt.db") -> Path:
    path = directory / name
    shutil.copyfile(template, path)
    return path


def checkpoint_id(step: int, prefix: int = 0) -> str:
    return f"{prefix:08x}-0000-4000-8000-{step:012d}"


def bulk_insert(path: Path, model_id: str, count: int, *, id_prefix: int = 0) -> None:
    """`count` checkpoints (steps 0 ..) with two metrics each, as the backend writes them, in one
    transaction: 100,000 take ~1 s instead of minutes of HTTP requests."""
    metric_rows = []
    checkpoint_rows = []
    for step in range(count):
        metrics = {"loss": step / count, "acc": (step * 7919) % 1000 / 1000}
        checkpoint_rows.append(
            (
                model_id,
                step,
                checkpoint_id(step, id_prefix),
                orjson.dumps(metrics).decode(),
                TIMESTAMP,
                TIMESTAMP,
            )
        )
        metric_rows += [(model_id, name, step, value) for name, value in metrics.items()]
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO checkpoints (model_id, step, id, metrics, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                checkpoint_rows,
            )
            db.executemany(
                "INSERT INTO checkpoint_metrics (model_id, name, step, value) VALUES (?, ?, ?, ?)",
                metric_rows,
            )
    finally:
        db.close()


def rows_of(path: Path, model_id: str) -> dict[str, int]:
    """How many rows `model_id` has in each of MODEL_TABLES."""
    db = sqlite3.connect(path, timeout=10)
    try:
        return {
            table: int(
                db.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE model_id = ?", (model_id,)
                ).fetchone()[0]
            )
            for table in MODEL_TABLES
        }
    finally:
        db.close()
