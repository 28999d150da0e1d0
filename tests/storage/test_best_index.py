"""On SQLite, with a model of 100,000 checkpoints: `best` reads the index `ix_checkpoint_metrics_best`
(shown with EXPLAIN QUERY PLAN on the statements the backend really runs), and retention over HTTP
deletes exactly the right checkpoints and leaves a tombstone for each (docs/lifecycle.md)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from ckpt_registry.server import Settings
from ckpt_registry.storage.sqlite import SQLiteStorage

from ..conftest import add_key, serving

CHECKPOINTS = 100_000
TIMESTAMP = "2026-01-01T00:00:00.000000Z"


def acc_of(step: int) -> float | None:
    """A scrambled score with many ties (1,000 distinct values); every tenth step has none."""
    return None if step % 10 == 3 else (step * 7919) % 1000 / 1000


@dataclass
class BigModel:
    path: Path
    url: str
    key: str
    model_id: str


@pytest.fixture
def big_model(sqlite_template: Path, tmp_path: Path) -> Iterator[BigModel]:
    path = tmp_path / "big.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    key = add_key(url)
    with serving(Settings(database_url=url, gc_interval_seconds=0)) as running:
        with running.client(key) as api:
            response = api.post(
                "/preview/models", json={"project": "p", "name": "big", "base_model": "b"}
            )
            model_id = response.json()["id"]
        bulk_insert(path, model_id)
        yield BigModel(path, running.url, key, model_id)


def bulk_insert(path: Path, model_id: str) -> None:
    """Rows as the backend writes them, without 100,000 HTTP requests."""
    checkpoints, metrics = [], []
    for step in range(CHECKPOINTS):
        acc = acc_of(step)
        document = (
            {"acc": acc, "loss": step / CHECKPOINTS}
            if acc is not None
            else {"loss": step / CHECKPOINTS}
        )
        checkpoints.append(
            (
                model_id,
                step,
                f"00000000-0000-4000-8000-{step:012d}",
                orjson.dumps(document).decode(),
                TIMESTAMP,
                TIMESTAMP,
            )
        )
        metrics += [(model_id, name, step, value) for name, value in document.items()]
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO checkpoints (model_id, step, id, metrics, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            checkpoints,
        )
        db.executemany(
            "INSERT INTO checkpoint_metrics (model_id, name, step, value) VALUES (?, ?, ?, ?)",
            metrics,
        )
    db.close()


def expected_best(mode: str, k: int) -> list[int]:
    scored = [(acc, step) for step in range(CHECKPOINTS) if (acc := acc_of(step)) is not None]
    # Best first; ties go to the later step in both modes.
    scored.sort(key=lambda pair: (-pair[0] if mode == "max" else pair[0], -pair[1]))
    return [step for _, step in scored[:k]]


def statements_of_best(path: Path, model_id: str, mode: str) -> tuple[list[str], int]:
    """The SQL (parameters bound) the backend runs to answer `best`, and the step it answered."""
    statements: list[str] = []

    async def run() -> int:
        storage = SQLiteStorage(path)
        await storage.open()
        try:
            storage.db.set_trace_callback(statements.append)
            checkpoint = await storage.best_checkpoint(
                "default", model_id, "acc", "max" if mode == "max" else "min"
            )
        finally:
            await storage.close()
        return checkpoint.step

    step = asyncio.run(run())
    return [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")], step


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_reads_the_index_not_every_checkpoint(big_model: BigModel, mode: str) -> None:
    statements, step = statements_of_best(big_model.path, big_model.model_id, mode)

    assert step == expected_best(mode, 1)[0]
    db = sqlite3.connect(big_model.path)
    plans = {sql: [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")] for sql in statements}
    db.close()
    ranking = [plan for sql, plan in plans.items() if "checkpoint_metrics" in sql]
    assert ranking, plans
    for plan in ranking:
        assert any(
            "USING COVERING INDEX ix_checkpoint_metrics_best (model_id=? AND name=?)" in line
            for line in plan
        ), plan
    for sql, plan in plans.items():
        # SEARCH = a seek into an index; a SCAN of a table or index would read every row.
        assert not any(line.startswith("SCAN") for line in plan), (sql, plan)


def test_best_over_http_on_100_000_checkpoints(big_model: BigModel) -> None:
    with httpx.Client(
        base_url=big_model.url, headers={"Authorization": f"Bearer {big_model.key}"}
    ) as api:
        for mode in ("max", "min"):
            response = api.get(
                f"/preview/models/{big_model.model_id}/checkpoints/best",
                params={"metric": "acc", "mode": mode},
            )
            assert response.status_code == 200
            assert response.json()["step"] == expected_best(mode, 1)[0]
        loss = api.get(
            f"/preview/models/{big_model.model_id}/checkpoints/best",
            params={"metric": "loss", "mode": "min"},
        )
        assert loss.json()["step"] == 0


def test_retention_on_100_000_checkpoints(big_model: BigModel) -> None:
    body = {"keep_latest": 100, "keep_best": {"metric": "acc", "mode": "max", "k": 50}}
    kept = sorted(set(range(CHECKPOINTS - 100, CHECKPOINTS)) | set(expected_best("max", 50)))
    deleted = sorted(set(range(CHECKPOINTS)) - set(kept))
    endpoint = f"/preview/models/{big_model.model_id}/checkpoints/retention"

    with httpx.Client(
        base_url=big_model.url, headers={"Authorization": f"Bearer {big_model.key}"}, timeout=120
    ) as api:
        preview = api.post(endpoint, json=body | {"dry_run": True}).json()
        assert preview == {
            "dry_run": True,
            "kept_steps": kept,
            "deleted_steps": deleted,
            "freed_bytes": 0,
        }
        assert count(big_model.path, "checkpoints") == CHECKPOINTS

        result = api.post(endpoint, json=body).json()

        assert result == {
            "dry_run": False,
            "kept_steps": kept,
            "deleted_steps": deleted,
            "freed_bytes": 0,
        }
        listed = api.get(
            f"/preview/models/{big_model.model_id}/checkpoints",
            params={"limit": 100, "order": "desc"},
        )
        assert listed.json()["data"][0]["step"] == CHECKPOINTS - 1
        # A cursor on a deleted checkpoint still walks on from its position.
        cursor = f"00000000-0000-4000-8000-{deleted[-1]:012d}"
        page = api.get(
            f"/preview/models/{big_model.model_id}/checkpoints",
            params={"after": cursor, "limit": 1},
        )
        assert page.json()["data"][0]["step"] == next(step for step in kept if step > deleted[-1])
    assert count(big_model.path, "checkpoints") == len(kept)
    assert count(big_model.path, "checkpoint_tombstones") == len(deleted)
    assert count(big_model.path, "checkpoint_metrics") == sum(
        2 if acc_of(step) is not None else 1 for step in kept
    )


def count(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        (rows,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    finally:
        db.close()
    return int(rows)
