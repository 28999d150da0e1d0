"""Crashes: a `ckpt serve` killed with SIGKILL under load keeps every write it acknowledged, exactly
once, and a kill in the middle of an upload (local folder or S3) leaves no visible file: the restarted
server's collector removes what the cut PUT staged, and the resumable upload continues."""

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
from urllib.parse import urlsplit

import httpx
import pytest

from tests.moto import (  # noqa: F401  (fixtures, found by name)
    MIB,
    MOTO_UPLOAD_TTL_SECONDS,
    aws_env,
    create_bucket,
    moto_endpoint,
    s3_client,
)

from .. import pg
from ..conftest import add_key
from .helpers import create_model, register

CLIENTS = 16
ROUNDS = 3
# Each round kills the server once this many writes have been acknowledged (at least; the clients
# keep writing until the connection drops).
ACKS_BEFORE_KILL = 120
# A cut upload sends this much before the kill, and the store holds at least STAGED_BEFORE_KILL of
# it (on S3 one 8 MiB part; the rest was in the server's memory).
SENT_BEFORE_KILL = 10 * MIB
STAGED_BEFORE_KILL = 8 * MIB


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
def started(
    database_url: str, folder: Path, blob_url: Path | str, env: dict[str, str] | None = None
) -> Iterator[pg.ServerProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    (server,) = pg.start_servers(
        database_url, 1, folder, {"CKPT_BLOB_URL": str(blob_url), **(env or {})}
    )
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


@pytest.fixture(params=["local", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "blobs")
    return f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/registry"


def staged_bytes(blob_url: str) -> dict[str, int]:
    """Each upload staged in the store (docs/files.md: uploads/<id>) with the bytes it holds. A
    running server's collector may remove one while it is being listed: it is left out."""
    if not blob_url.startswith("s3://"):
        staged_files: dict[str, int] = {}
        for path in (Path(blob_url) / "uploads").iterdir():
            if not path.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    staged_files[path.name] = path.stat().st_size
        return staged_files
    s3 = s3_client(os.environ["AWS_ENDPOINT_URL"])
    bucket, folder = urlsplit(blob_url).netloc, "registry/uploads/"
    staged: dict[str, int] = {}
    for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=folder).get("Uploads", []):
        try:
            parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except s3.exceptions.NoSuchUpload:
            continue
        name = upload["Key"].removeprefix(folder)
        staged[name] = sum(part["Size"] for part in parts.get("Parts", []))
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", []):
        name = item["Key"].removeprefix(folder).removesuffix(".tail")
        staged[name] = staged.get(name, 0) + item["Size"]
    return staged


def stored_blobs(blob_url: str) -> dict[str, bytes]:
    """Each blob in the store (sha256/...), by name, with its bytes."""
    if not blob_url.startswith("s3://"):
        files = (Path(blob_url) / "sha256").rglob("*")
        return {p.name: p.read_bytes() for p in files if p.is_file()}
    s3 = s3_client(os.environ["AWS_ENDPOINT_URL"])
    bucket, folder = urlsplit(blob_url).netloc, "registry/sha256/"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
    return {
        item["Key"].removeprefix(folder): s3.get_object(Bucket=bucket, Key=item["Key"])[
            "Body"
        ].read()
        for item in listed
    }


def test_sigkill_mid_upload_leaves_no_visible_file_and_no_orphan(
    database_url: str, tmp_path: Path, blob_url: str
) -> None:
    key = add_key(database_url)
    # moto dates every multipart upload 2010: a resumable one would look expired at once.
    env = {"CKPT_UPLOAD_TTL_SECONDS": str(MOTO_UPLOAD_TTL_SECONDS)}
    kept_data = os.urandom(100_000)
    put_data = os.urandom(SENT_BEFORE_KILL)
    resumed_data = os.urandom(SENT_BEFORE_KILL + 3 * MIB)
    with (
        started(database_url, tmp_path / "first", blob_url, env) as server,
        server.client(key) as api,
    ):
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

        killed = threading.Event()
        sending = [threading.Event(), threading.Event()]

        def body(data: bytes, sent: threading.Event) -> Iterator[bytes]:
            # 64 MiB announced, 10 MiB sent (over one 8 MiB S3 part), then the body stalls until
            # the server dies under it.
            for start in range(0, len(data), 64 * 1024):
                yield data[start : start + 64 * 1024]
            sent.set()
            killed.wait(30)
            yield b"never read"

        def send(method: str, url: str, headers: dict[str, str], data: bytes, index: int) -> None:
            # The server dies under the request: however the client fails is expected (a reset
            # connection, or h11 refusing a body shorter than its Content-Length).
            with server.client(key) as client, contextlib.suppress(Exception):
                client.request(method, url, content=body(data, sending[index]), headers=headers)

        length = {"Content-Length": str(64 * MIB)}
        senders = [
            threading.Thread(target=send, args=("PUT", f"{files}/cut.bin", length, put_data, 0)),
            threading.Thread(
                target=send,
                args=(
                    "PATCH",
                    upload,
                    {**length, "Upload-Offset": "0"},
                    resumed_data[:SENT_BEFORE_KILL],
                    1,
                ),
            ),
        ]
        for sender in senders:
            sender.start()
        assert all(sent.wait(30) for sent in sending)
        # Both bodies are arriving: a part's worth of each is staged in the blob store.
        deadline = time.monotonic() + 30
        while len([n for n in staged_bytes(blob_url).values() if n >= STAGED_BEFORE_KILL]) < 2:
            assert time.monotonic() < deadline, "the uploads never reached the blob store"
            time.sleep(0.05)
        kill(server)
        killed.set()
        for sender in senders:
            sender.join(timeout=30)

    integrity_check(database_url)
    staged = staged_bytes(blob_url)
    cut = [size for name, size in staged.items() if name.startswith("put-")]
    assert len(cut) == 1 and cut[0] >= STAGED_BEFORE_KILL, staged
    # Restarted with a collector pass every half second. A plain PUT's staged bytes have no one to
    # come back for them: gone at once from a folder (no request holds their lock), on S3 once
    # unwritten for CKPT_PUT_IDLE_SECONDS. The resumable upload's wait for its client.
    again = {**env, "CKPT_GC_INTERVAL_SECONDS": "0.5", "CKPT_PUT_IDLE_SECONDS": "1"}
    with (
        started(database_url, tmp_path / "second", blob_url, again) as server,
        server.client(key) as api,
    ):
        deadline = time.monotonic() + 30
        while any(name.startswith("put-") for name in staged_bytes(blob_url)):
            assert time.monotonic() < deadline, "the killed PUT's staged bytes stayed"
            time.sleep(0.1)
        assert [name for name in staged_bytes(blob_url) if not name.startswith("put-")] == [
            name for name in staged if not name.startswith("put-")
        ]
        listed = api.get(files)
        assert listed.status_code == 200
        assert [item["path"] for item in listed.json()["data"]] == ["kept.bin"]
        assert api.get(f"{files}/cut.bin").status_code == 404
        assert api.get(f"{files}/resumed.bin").status_code == 404
        assert api.get(f"{files}/kept.bin").content == kept_data
        # The resumable upload kept what arrived, and continues from there after the passes.
        offset = int(api.head(upload).headers["upload-offset"])
        assert STAGED_BEFORE_KILL <= offset <= SENT_BEFORE_KILL
        appended = api.patch(
            upload, content=resumed_data[offset:], headers={"Upload-Offset": str(offset)}
        )
        assert appended.status_code == 204, appended.text
        done = api.post(f"{upload}/complete", json={"sha256": sha256(resumed_data)})
        assert done.status_code == 201, done.text
        assert api.get(f"{files}/resumed.bin").content == resumed_data
        assert staged_bytes(blob_url) == {}

    # What is left is the two files' blobs, whole, and nothing `ckpt db gc` could remove.
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
            blob_url,
            "--blob-grace",
            "0",
        ],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert gc.returncode == 0, gc.stderr
    assert "removed 0 unreferenced blobs" in gc.stdout.decode()
    assert staged_bytes(blob_url) == {}
    stored = stored_blobs(blob_url)
    assert sorted(stored) == sorted([sha256(kept_data), sha256(resumed_data)])
    assert all(sha256(data) == name for name, data in stored.items())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
