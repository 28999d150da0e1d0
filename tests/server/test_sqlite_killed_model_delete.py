"""A `ckpt serve` killed while it deletes a big model on SQLite: `ckpt db gc`, or the next start of the
server, removes every row the model had left, and no row of any other model."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from ckpt_registry.contract import TIMESTAMP_FORMAT

from .. import pg
from ..conftest import add_key
from ..sqlite_files import bulk_insert, checkpoint_id, fresh_copy, rows_of
from .helpers import create_model

# Deleting this many takes ~1.5 s on the server (60 transactions of 5,000 rows), ample time to kill
# it halfway; the report behind this test killed one of 300,000 a second in, leaving 235,000 rows.
CHECKPOINTS = 100_000


def add_deleted_rows(path: Path, model_id: str, count: int, prefix: int) -> None:
    """Tombstones and expired cursors, so every table of the model has rows to lose; the tombstones
    are fresh, so `ckpt db gc` does not purge them for their age."""
    now = datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO checkpoint_tombstones (id, model_id, step, deleted_at) VALUES (?, ?, ?, ?)",
            [(checkpoint_id(i, prefix), model_id, 10**9 + i, now) for i in range(count)],
        )
        db.executemany(
            "INSERT INTO expired_cursors (id, model_id, purged_at) VALUES (?, ?, ?)",
            [(checkpoint_id(i, prefix + 1), model_id, now) for i in range(count)],
        )
    db.close()


def purged_at(path: Path, model_id: str) -> str | None:
    db = sqlite3.connect(path)
    try:
        (value,) = db.execute("SELECT purged_at FROM models WHERE id = ?", (model_id,)).fetchone()
    finally:
        db.close()
    return str(value) if value is not None else None


def kill_while_deleting(server: pg.ServerProcess, key: str, path: Path, model_id: str) -> None:
    """DELETE the model, and SIGKILL the server once its rows have started to go."""
    before = sum(rows_of(path, model_id).values())

    def delete() -> None:
        # The server is killed under it, as intended: no answer comes.
        with server.client(key) as client, contextlib.suppress(httpx.TransportError):
            client.delete(f"/preview/models/{model_id}")

    deleting = threading.Thread(target=delete)
    deleting.start()
    deadline = time.monotonic() + 30
    while sum(rows_of(path, model_id).values()) == before:
        assert time.monotonic() < deadline, "the delete never started"
        assert deleting.is_alive(), "the DELETE was answered before any row went"
        time.sleep(0.005)
    server.process.kill()
    server.process.wait(timeout=10)
    deleting.join(timeout=30)


@pytest.mark.parametrize("finished_by", ["ckpt db gc", "restart"])
def test_a_model_delete_cut_short_by_sigkill_is_finished_later(
    sqlite_template: Path, tmp_path: Path, finished_by: str
) -> None:
    path = fresh_copy(sqlite_template, tmp_path)
    url = f"sqlite:///{path}"
    key = add_key(url)
    (server,) = pg.start_servers(url, 1, tmp_path)
    try:
        with server.client(key) as api:
            doomed, kept = create_model(api, "doomed"), create_model(api, "kept")
        bulk_insert(path, doomed, CHECKPOINTS, id_prefix=1)
        add_deleted_rows(path, doomed, 500, prefix=2)
        bulk_insert(path, kept, 1000, id_prefix=4)
        add_deleted_rows(path, kept, 100, prefix=5)
        kept_rows = rows_of(path, kept)
        with server.client(key) as api:  # the server sees the rows written behind its back
            response = api.get(f"/preview/models/{doomed}/checkpoints", params={"limit": 1})
            assert response.json()["has_more"] is True

        kill_while_deleting(server, key, path, doomed)
    finally:
        server.stop()

    left = rows_of(path, doomed)
    assert sum(left.values()) > 0, "the delete finished before the kill: use more rows"

    if finished_by == "ckpt db gc":
        gc = subprocess.run(
            [sys.executable, "-m", "ckpt_registry.cli", "db", "gc", "--database-url", url],
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert gc.returncode == 0, gc.stderr
        assert rows_of(path, doomed) == dict.fromkeys(left, 0), f"ckpt db gc left rows ({left})"
    else:
        (tmp_path / "again").mkdir()
        (server,) = pg.start_servers(url, 1, tmp_path / "again")
        try:
            # ~3 s here, most of it the start of the process.
            deadline = time.monotonic() + 20
            while (now := rows_of(path, doomed)) != dict.fromkeys(left, 0):
                assert time.monotonic() < deadline, f"rows left 20 s after a restart: {now}"
                time.sleep(0.05)
            with server.client(key) as api:
                response = api.get(f"/preview/models/{doomed}")
                assert response.status_code == 404, response.text
                listed = api.get(f"/preview/models/{kept}/checkpoints", params={"limit": 100})
                assert len(listed.json()["data"]) == 100
        finally:
            server.stop()

    assert purged_at(path, doomed) is not None
    assert rows_of(path, kept) == kept_rows
