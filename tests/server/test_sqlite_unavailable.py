"""SQLite that cannot write for a while (a full disk, a lock held by another process): writes answer
503 with Retry-After, reads and health checks do not wait, the log says it once, and the server
recovers by itself."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .. import pg
from ..conftest import add_key
from ..sqlite_files import fresh_copy
from .helpers import create_model, walk

# Measures latency or stops a shared service: run alone, after the parallel run (scripts/test).
pytestmark = pytest.mark.serial

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0 and not pg.in_ci():
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert int(response.headers["retry-after"]) > 0


def test_a_full_disk_answers_503_until_space_is_freed(
    sqlite_template: Path, tmp_path: Path, small_disk: Path
) -> None:
    path = fresh_copy(sqlite_template, small_disk)
    url = f"sqlite:///{path}"
    key = add_key(url)
    # Most of the disk goes to a file of our own: deleting it later frees space without touching
    # the database. ~1.5 MiB stay free, which ~100 registrations of 20 metrics fill.
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 3 * MIB // 2))
    (server,) = pg.start_servers(url, 1, tmp_path)
    try:
        with server.client(key) as api:
            model_id = create_model(api, "filling")
            path_ = f"/preview/models/{model_id}/checkpoints"
            metrics = {f"metric_{i:02d}": i / 7 for i in range(20)}
            created: list[str] = []
            for step in range(5000):
                response = api.post(path_, json={"step": step, "metrics": metrics})
                if response.status_code != 201:
                    break
                created.append(response.json()["id"])
            else:
                pytest.fail("5,000 registrations did not fill the disk")
            failures = [response]
            failures += [
                api.post(path_, json={"step": 10**6 + i, "metrics": metrics}) for i in range(20)
            ]
            for response in failures:
                assert_unavailable(response)
                assert "disk is full" in response.json()["detail"]

            check = httpx.get(f"{server.url}/system-check", timeout=10)
            assert check.status_code == 503, check.text
            assert check.json()["status"] == "error"
            assert "disk is full" in check.json()["checks"]["database"]
            # Reads need no space.
            assert api.get(path_, params={"limit": 5}).status_code == 200

            log = server.log.read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]
            assert log.count("disk is full") == 1, log[-3000:]

            filler.unlink()
            deadline = time.monotonic() + 10
            while (check := httpx.get(f"{server.url}/system-check", timeout=10)).status_code != 200:
                assert time.monotonic() < deadline, check.text
                time.sleep(0.1)
            assert check.json() == {"status": "ok", "checks": {"database": "ok", "blobs": "ok"}}
            response = api.post(path_, json={"step": 10**7, "metrics": metrics})
            assert response.status_code == 201, response.text
            created.append(response.json()["id"])

            assert [item["id"] for item in walk(api, model_id, limit=100)] == created
        log = server.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert log.count("disk is full") == 1 and log.count("recovered") == 1, log[-3000:]
    finally:
        server.stop()


def test_a_lock_held_by_another_process_delays_only_writes(
    sqlite_template: Path, tmp_path: Path
) -> None:
    path = fresh_copy(sqlite_template, tmp_path)
    url = f"sqlite:///{path}"
    key = add_key(url)
    (server,) = pg.start_servers(url, 1, tmp_path)
    locked, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(timeout=7)
            db.execute("ROLLBACK")
        finally:
            db.close()

    holder = threading.Thread(target=hold_the_write_lock)
    try:
        with server.client(key) as api, server.client(key) as reader:
            model_id = create_model(api, "locked-out")
            path_ = f"/preview/models/{model_id}/checkpoints"
            assert api.post(path_, json={"step": 1, "metrics": {}}).status_code == 201
            holder.start()
            assert locked.wait(timeout=10)

            answer: list[tuple[httpx.Response, float]] = []

            def register() -> None:
                started = time.monotonic()
                response = api.post(path_, json={"step": 2, "metrics": {}})
                answer.append((response, time.monotonic() - started))

            registering = threading.Thread(target=register)
            registering.start()
            latencies: list[tuple[str, float]] = []
            while registering.is_alive():
                for name, url_, params in (
                    ("health", "/health", {}),
                    ("list", path_, {"limit": 10}),
                ):
                    started = time.monotonic()
                    response = reader.get(url_, params=params)
                    latencies.append((name, time.monotonic() - started))
                    assert response.status_code == 200, response.text
                time.sleep(0.02)
            registering.join()

            response, elapsed = answer[0]
            assert_unavailable(response)
            assert "locked" in response.json()["detail"]
            # Refused after the 5 s busy timeout, while the lock was still held.
            assert 4.5 < elapsed < 7, elapsed
            assert len(latencies) > 50, len(latencies)
            slowest = max(latencies, key=lambda sample: sample[1])
            assert slowest[1] < 0.1, (slowest, len(latencies))

            release.set()
            holder.join(timeout=10)
            response = api.post(path_, json={"step": 2, "metrics": {}})
            assert response.status_code == 201, response.text
        assert "Traceback" not in server.log.read_text(errors="replace")
    finally:
        release.set()
        if holder.is_alive():
            holder.join(timeout=10)
        server.stop()
