"""Crashes: a `ckpt serve` killed with SIGKILL under load keeps every write it acknowledged, exactly
once, and a kill in the middle of an upload leaves no visible file and nothing `ckpt db gc` cannot
remove."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .. import pg
from ..conftest import add_key
from .helpers import create_model, register

CLIENTS = 16
ROUNDS = 3
# Each round kills the server once this many writes have been acknowledged (at least; the clients
# keep writing until the connection drops).
ACKS_BEFORE_KILL = 120
MIB = 1024 * 1024


@dataclass
class Written:
    """What one client knows of one checkpoint: the metrics acknowledged, and a PATCH that was sent
    but never answered (it may or may not have landed)."""

    step: int
    id: str
    metrics: dict[str, float]
    unanswered: dict[str, float] | None = None


@dataclass
class Writer:
    """One client: its own model, a register then a PATCH per step, every 2xx recorded."""

    model_id: str
    acknowledged: dict[int, Written] = field(default_factory=dict)
    attempted: set[int] = field(default_factory=set)  # every step sent, answered or not
    acks: int = 0

    def run(self, url: str, key: str, first_step: int, stop: threading.Event) -> None:
        checkpoints = f"/preview/models/{self.model_id}/checkpoints"
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as client:
            step = first_step
            while not stop.is_set():
                metrics = {"loss": 1.0 / (step + 1), "round": float(first_step)}
                self.attempted.add(step)
                try:
                    response = client.post(checkpoints, json={"step": step, "metrics": metrics})
                except httpx.TransportError:
                    return  # the server is gone: this step may or may not be stored
                assert response.status_code == 201, response.text
                written = Written(step, response.json()["id"], metrics)
                self.acknowledged[step] = written
                self.acks += 1
                update = {"eval": float(step % 7)}
                written.unanswered = update
                try:
                    patched = client.patch(f"{checkpoints}/{written.id}", json={"metrics": update})
                except httpx.TransportError:
                    return
                assert patched.status_code == 200, patched.text
                written.metrics = {**metrics, **update}
                written.unanswered = None
                self.acks += 1
                step += 1


def walk(client: httpx.Client, model_id: str) -> list[dict[str, object]]:
    """Every checkpoint of a model, page by page."""
    items: list[dict[str, object]] = []
    params: dict[str, object] = {"limit": 100}
    while True:
        response = client.get(f"/preview/models/{model_id}/checkpoints", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["data"])
        if not page["has_more"]:
            return items
        params["after"] = page["last_id"]


def check_acknowledged(client: httpx.Client, writers: list[Writer]) -> int:
    """Every acknowledged write is there exactly once with its metrics; nothing appears that no
    client sent. Returns the number of acknowledged checkpoints checked."""
    checked = 0
    for writer in writers:
        stored = walk(client, writer.model_id)
        steps = [item["step"] for item in stored]
        assert len(steps) == len(set(steps)), "a step is listed twice"
        by_step = {item["step"]: item for item in stored}
        assert set(by_step) <= writer.attempted, "a checkpoint no client sent"
        for step, written in writer.acknowledged.items():
            item = by_step.get(step)
            assert item is not None, f"acknowledged step {step} of {writer.model_id} is lost"
            assert item["id"] == written.id
            allowed = [written.metrics]
            if written.unanswered is not None:
                allowed.append({**written.metrics, **written.unanswered})
            assert item["metrics"] in allowed, (step, item["metrics"], allowed)
            checked += 1
    return checked


def integrity_check(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        return
    db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


@contextlib.contextmanager
def started(database_url: str, folder: Path, blobs: Path) -> Iterator[pg.ServerProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    (server,) = pg.start_servers(database_url, 1, folder, {"CKPT_BLOB_URL": str(blobs)})
    try:
        yield server
    finally:
        server.stop()  # a no-op after a kill


def kill(server: pg.ServerProcess) -> None:
    server.process.kill()  # SIGKILL: no shutdown, no flush, no goodbye
    server.process.wait(timeout=10)


def test_sigkill_under_load_loses_no_acknowledged_write(database_url: str, tmp_path: Path) -> None:
    key = add_key(database_url)
    blobs = tmp_path / "blobs"
    writers: list[Writer] = []
    checked = 0
    # Each start after the first checks what the previous round's clients were told, then (but the
    # last) loads the server again and kills it.
    for round_number in range(ROUNDS + 1):
        with started(database_url, tmp_path / f"round-{round_number}", blobs) as server:
            with server.client(key) as api:
                if not writers:
                    writers = [Writer(create_model(api, f"writer-{i}")) for i in range(CLIENTS)]
                checked = check_acknowledged(api, writers)
            if round_number == ROUNDS:
                break
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=writer.run, args=(server.url, key, round_number * 1_000_000, stop)
                )
                for writer in writers
            ]
            before = sum(writer.acks for writer in writers)
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while sum(writer.acks for writer in writers) - before < ACKS_BEFORE_KILL:
                assert time.monotonic() < deadline, "the clients made no progress"
                assert all(thread.is_alive() for thread in threads), "a client failed"
                time.sleep(0.01)
            kill(server)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        integrity_check(database_url)
    # Every round's acknowledged checkpoints, the earlier ones checked again after later kills.
    assert checked >= ROUNDS * ACKS_BEFORE_KILL // 2


def staged_and_stored(blobs: Path) -> tuple[list[Path], list[Path]]:
    """The store's staged uploads and its blobs (docs/files.md: uploads/<id>, sha256/ab/<sha256>)."""
    staged = sorted(p for p in (blobs / "uploads").iterdir() if not p.name.startswith("."))
    stored = sorted(p for p in (blobs / "sha256").rglob("*") if p.is_file())
    return staged, stored


def test_sigkill_mid_upload_leaves_no_visible_file_and_no_orphan(
    database_url: str, tmp_path: Path
) -> None:
    key = add_key(database_url)
    blobs = tmp_path / "blobs"
    kept_data = os.urandom(100_000)
    with started(database_url, tmp_path / "first", blobs) as server, server.client(key) as api:
        model = create_model(api, "uploads")
        checkpoint = register(api, model, 1)["id"]
        files = f"/preview/models/{model}/checkpoints/{checkpoint}/files"
        assert api.put(f"{files}/kept.bin", content=kept_data).status_code == 201
        started_upload = api.post(
            f"/preview/models/{model}/checkpoints/{checkpoint}/uploads",
            json={"path": "resumed.bin"},
        )
        assert started_upload.status_code == 201, started_upload.text
        upload = f"/preview/uploads/{started_upload.json()['id']}"

        sent, killed = threading.Event(), threading.Event()

        def body() -> Iterator[bytes]:
            # 64 MiB announced, 2 MiB sent, then the body stalls until the server dies under it.
            for _ in range(32):
                yield os.urandom(64 * 1024)
            sent.set()
            killed.wait(30)
            yield b"never read"

        def send(method: str, url: str, headers: dict[str, str]) -> None:
            # The server dies under the request: however the client fails is expected (a reset
            # connection, or h11 refusing a body shorter than its Content-Length).
            with server.client(key) as client, contextlib.suppress(Exception):
                client.request(method, url, content=body(), headers=headers)

        length = {"Content-Length": str(64 * MIB)}
        senders = [
            threading.Thread(target=send, args=("PUT", f"{files}/cut.bin", length)),
            threading.Thread(target=send, args=("PATCH", upload, {**length, "Upload-Offset": "0"})),
        ]
        for sender in senders:
            sender.start()
        assert sent.wait(30)
        # Both bodies are arriving: some of their bytes are staged in the blob folder.
        deadline = time.monotonic() + 30
        while sum(p.stat().st_size for p in staged_and_stored(blobs)[0]) < 2 * MIB:
            assert time.monotonic() < deadline, "the uploads never reached the blob store"
            time.sleep(0.01)
        kill(server)
        killed.set()
        for sender in senders:
            sender.join(timeout=30)

    integrity_check(database_url)
    with started(database_url, tmp_path / "second", blobs) as server, server.client(key) as api:
        listed = api.get(files)
        assert listed.status_code == 200
        assert [item["path"] for item in listed.json()["data"]] == ["kept.bin"]
        assert api.get(f"{files}/cut.bin").status_code == 404
        assert api.get(f"{files}/resumed.bin").status_code == 404
        # The resumable upload kept what arrived, and can be cancelled.
        offset = api.head(upload)
        assert offset.status_code == 200
        assert 0 <= int(offset.headers["upload-offset"]) <= 64 * MIB
        assert api.get(f"{files}/kept.bin").content == kept_data

    # Every age set to 0: staged bytes of the cut PUT and of the unfinished upload are orphans now.
    gc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ckpt_registry.cli",
            "db",
            "gc",
            "--database-url",
            database_url,
            "--blob-url",
            str(blobs),
            "--blob-grace",
            "0",
            "--upload-ttl",
            "0",
        ],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert gc.returncode == 0, gc.stderr
    staged, stored = staged_and_stored(blobs)
    assert staged == [], "gc left staged upload bytes"
    assert [path.name for path in stored] == [hashlib.sha256(kept_data).hexdigest()], (
        "gc left an orphaned blob"
    )
    # What is left is the kept file's blob, whole.
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == stored[0].name
