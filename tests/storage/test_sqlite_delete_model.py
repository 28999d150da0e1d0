"""Deleting a model on SQLite removes every row it had, in batches that leave the server responsive."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from ckpt_registry.storage.sqlite import SQLiteStorage
from ckpt_registry.storage.urls import sqlite_path

from ..conftest import RunningServer

TABLES = ("checkpoints", "checkpoint_metrics", "checkpoint_tombstones", "expired_cursors")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_deleting_a_model_removes_all_its_rows_batch_by_batch(
    server: RunningServer, api: httpx.Client, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SQLiteStorage, "delete_batch", 7)  # several batches per table
    for step in range(40):
        response = api.post(
            f"/preview/models/{model_id}/checkpoints",
            json={"step": step, "metrics": {"loss": step / 10, "acc": 1 - step / 100}},
        )
        assert response.status_code == 201
    deleted = api.request(
        "DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": list(range(0, 40, 3))}
    )
    assert deleted.json()["deleted_count"] == 14
    other = api.post("/preview/models", json={"project": "p", "name": "other", "base_model": "b"})
    other_id = other.json()["id"]
    assert api.post(f"/preview/models/{other_id}/checkpoints", json={"step": 1}).status_code == 201

    response = api.delete(f"/preview/models/{model_id}")

    assert response.json() == {
        "model_id": model_id,
        "deleted_checkpoints": 26,
        "deleted_run": False,
    }
    with sqlite3.connect(sqlite_path(server.database_url)) as db:
        for table in TABLES:
            (left,) = db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE model_id = ?", (model_id,)
            ).fetchone()
            assert left == 0, table
    assert [
        c["step"] for c in api.get(f"/preview/models/{other_id}/checkpoints").json()["data"]
    ] == [1]
