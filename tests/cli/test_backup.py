"""`ckpt db backup` under write load, then `ckpt db restore`: the restored registry holds everything
acknowledged before the backup began, is consistent (every checkpoint walks, every file downloads
with its digest), and serves. PostgreSQL: the command points to pg_dump and takes nothing."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from ckpt_registry.cli.main import cli
from ckpt_registry.server import Settings
from tests.conftest import RunningServer, add_key, serving
from tests.server.helpers import create_model, register, snapshot


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def files_url(model: str, checkpoint: str, path: str = "") -> str:
    base = f"/preview/models/{model}/checkpoints/{checkpoint}/files"
    return f"{base}/{path}" if path else base


def write_load(api: httpx.Client, model: str, stop: threading.Event, acked: list[int]) -> None:
    """Register checkpoints with a file each until stopped; `acked` gets each step answered."""
    step = 1000
    while not stop.is_set():
        checkpoint = register(api, model, step, {"loss": 1 / step})["id"]
        data = f"load {step}".encode() * 50
        assert api.put(files_url(model, checkpoint, "w.bin"), content=data).status_code == 201
        acked.append(step)
        step += 1


def walk_everything(api: httpx.Client) -> dict[str, Any]:
    """Every model, checkpoint and file, each file downloaded and checked against its digest."""
    state = snapshot(api)
    for model_id, model in state.items():
        for checkpoint in model["checkpoints"]:
            listed = api.get(files_url(model_id, checkpoint["id"]))
            assert listed.status_code == 200, listed.text
            checkpoint["files"] = listed.json()["data"]
            for record in checkpoint["files"]:
                got = api.get(files_url(model_id, checkpoint["id"], record["path"]))
                assert got.status_code == 200, got.text
                assert hashlib.sha256(got.content).hexdigest() == record["sha256"]
    return state


def test_a_backup_taken_under_write_load_restores_whole(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'live.db'}"
    blob_url = str(tmp_path / "live-blobs")
    code, output = run("db", "upgrade", "--database-url", database_url)
    assert code == 0, output
    key = add_key(database_url)
    settings = Settings(database_url=database_url, blob_url=blob_url, gc_interval_seconds=0)
    with serving(settings) as server, server.client(key) as api:
        quiet = create_model(api, "quiet")
        for step in range(30):
            checkpoint = register(api, quiet, step, {"loss": float(step)})["id"]
            assert api.put(files_url(quiet, checkpoint, "a.bin"), content=b"a" * step).status_code
        api.request("DELETE", f"/preview/models/{quiet}/checkpoints", json={"steps": [3, 4]})
        busy = create_model(api, "busy")
        stop, acked = threading.Event(), []
        writer = threading.Thread(target=write_load, args=(api, busy, stop, acked))
        writer.start()
        try:
            while len(acked) < 5:
                threading.Event().wait(0.01)
            before = list(acked)
            code, output = run(
                "db",
                "backup",
                str(tmp_path / "backup"),
                "--database-url",
                database_url,
                "--blob-url",
                blob_url,
            )
        finally:
            stop.set()
            writer.join(timeout=30)
        assert code == 0, output
        assert "backed up schema" in output
        after = list(acked)

    restored_url = f"sqlite:///{tmp_path / 'restored.db'}"
    restored_blobs = str(tmp_path / "restored-blobs")
    code, output = run(
        "db",
        "restore",
        str(tmp_path / "backup"),
        "--database-url",
        restored_url,
        "--blob-url",
        restored_blobs,
    )
    assert code == 0, output
    restored_settings = Settings(
        database_url=restored_url, blob_url=restored_blobs, gc_interval_seconds=0
    )
    with serving(restored_settings) as restored, restored.client(key) as api:
        state = walk_everything(api)
        by_name = {model["model"]["name"]: model for model in state.values()}
        quiet_steps = [c["step"] for c in by_name["quiet"]["checkpoints"]]
        assert quiet_steps == [s for s in range(30) if s not in (3, 4)]
        busy_steps = [c["step"] for c in by_name["busy"]["checkpoints"]]
        # Whatever was acknowledged before the backup began is there; nothing half-made is.
        assert set(before) <= set(busy_steps) <= set(after) | {max(after) + 1}
        assert busy_steps == sorted(busy_steps)
        # Only the checkpoint in flight when the snapshot was taken may lack its file.
        assert all(len(c["files"]) == 1 for c in by_name["busy"]["checkpoints"][:-1])
        # The restored registry takes writes.
        register(api, by_name["busy"]["model"]["id"], 10**6)

    # Restore never overwrites.
    code, output = run("db", "restore", str(tmp_path / "backup"), "--database-url", restored_url)
    assert code == 1
    assert "exists" in output


def test_backup_into_a_non_empty_folder_is_refused(tmp_path: Path, server: RunningServer) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "something").write_text("x")
    code, output = run(
        "db", "backup", str(tmp_path / "taken"), "--database-url", server.database_url
    )
    assert code == 1
    if server.database_url.startswith("postgresql"):
        assert "pg_dump" in output and "pg_restore" in output
    else:
        assert "is not an empty folder" in output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["something"]


def test_postgresql_backup_points_to_pg_dump(tmp_path: Path, server: RunningServer) -> None:
    code, output = run("db", "backup", str(tmp_path / "new"), "--database-url", server.database_url)
    if server.database_url.startswith("sqlite"):
        assert code == 0, output
        assert (tmp_path / "new" / "ckpt.db").exists()
        return
    assert code == 1
    assert "pg_dump" in output
    assert not (tmp_path / "new").exists()
