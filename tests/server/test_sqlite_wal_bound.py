"""SQLite under sustained registrations from 16 clients: the WAL stays bounded, and every checkpoint
answered 201 is there afterwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from ckpt_registry.storage.sqlite.writer import MAX_GROUP, WAL_LIMIT_BYTES

from .. import pg
from ..conftest import add_key
from ..sqlite_files import fresh_copy
from .helpers import create_model, walk

CLIENTS = 16
SECONDS = 8.0
MIB = 1024 * 1024
# The writer resets the WAL after the commit group that takes it past WAL_LIMIT_BYTES, so the WAL can
# pass the limit by one group: at most MAX_GROUP registrations, each touching a handful of 4 KiB pages
# (a checkpoints leaf, a metrics leaf, an index leaf, now and then a split): under 4 MiB. A reset
# may also wait for a reader to leave the WAL and happen one group later; 16 MiB covers several.
# Measured on 2 cores: 4,500-5,000 registrations in 8 s, the WAL peaking at 53-64 MiB; before the
# bound, 194 MiB after 3,900 registrations (a faster client saw ~600 MB in 5 s, 2.6 GB in 40 s).
WAL_MARGIN_BYTES = 16 * MIB


def test_the_wal_stays_bounded_under_sustained_registrations(
    sqlite_template: Path, tmp_path: Path
) -> None:
    assert MAX_GROUP * 8 * 4096 < WAL_MARGIN_BYTES / 2  # the margin's reasoning still holds
    path = fresh_copy(sqlite_template, tmp_path)
    url = f"sqlite:///{path}"
    key = add_key(url)
    (server,) = pg.start_servers(url, 1, tmp_path)
    try:
        with server.client(key) as api:
            model_id = create_model(api, "sustained")
        wal = Path(f"{path}-wal")
        deadline = time.monotonic() + SECONDS
        created: list[str] = []
        refused: list[str] = []
        peak = 0

        def sample() -> None:
            nonlocal peak
            while time.monotonic() < deadline:
                try:
                    size = wal.stat().st_size
                except FileNotFoundError:
                    continue
                peak = max(peak, size)
                time.sleep(0.005)

        def register(index: int) -> None:
            body_metrics = {"loss": 0.5, "acc": 0.25, "lr": 1e-4}
            with server.client(key) as client:
                for step in range(index, 10**9, CLIENTS):
                    if time.monotonic() >= deadline:
                        return
                    try:
                        response = client.post(
                            f"/preview/models/{model_id}/checkpoints",
                            json={"step": step, "metrics": body_metrics},
                        )
                    except httpx.TransportError as exc:
                        refused.append(repr(exc))
                        continue
                    if response.status_code == 201:
                        created.append(response.json()["id"])
                    else:
                        refused.append(f"{response.status_code} {response.text[:200]}")

        threads = [threading.Thread(target=sample)]
        threads += [threading.Thread(target=register, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 60)

        assert not refused, (len(refused), refused[:3])
        assert len(created) > 2000, "too few registrations to grow the WAL past its limit"
        assert peak <= WAL_LIMIT_BYTES + WAL_MARGIN_BYTES, (
            f"the WAL reached {peak / MIB:.0f} MiB after {len(created)} registrations"
        )
        with server.client(key) as api:
            listed = {item["id"] for item in walk(api, model_id, limit=100)}
        assert listed == set(created)
    finally:
        server.stop()
