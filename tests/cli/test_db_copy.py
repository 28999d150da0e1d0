"""`ckpt db copy`: a populated SQLite registry (keys, tombstones, expired cursors, files) moved into a
fresh PostgreSQL database and its blobs from a folder into S3 (moto), the copy killed half-way and
run again; the new registry then answers as the old one did: the same ids, a cursor taken before the
copy continues, a deleted checkpoint's cursor is still a tombstone, every file downloads verified."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from click.testing import CliRunner

from ckpt_registry.cli.main import cli
from ckpt_registry.server import Settings
from ckpt_registry.storage import open_storage
from ckpt_registry.storage.compat import copy_problem
from ckpt_registry.storage.urls import postgres_dsn
from tests import pg
from tests.conftest import add_key, serving
from tests.moto import MOTO_UPLOAD_TTL_SECONDS, create_bucket, moto_endpoint  # noqa: F401
from tests.server.helpers import create_model, delete_steps, list_page, register, snapshot

CHECKPOINTS = 2500
METRICS = 10  # each: 25,000 metric rows, five batches, so the copy is killed inside that table


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def postgres_url() -> Iterator[str]:
    admin_url = pg.postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
    with pg.fresh_database(admin_url, migrated=False) as url:
        yield url


def files_url(model: str, checkpoint: str, path: str = "") -> str:
    base = f"/preview/models/{model}/checkpoints/{checkpoint}/files"
    return f"{base}/{path}" if path else base


def populate(database_url: str) -> None:
    """Many checkpoints written through the storage layer, as a long training run leaves them."""

    async def write() -> None:
        storage = open_storage(database_url)
        await storage.open()
        try:
            model, _ = await storage.create_model(
                "default", "proj", "long-run", "base", return_existing=False
            )
            for step in range(CHECKPOINTS):
                await storage.register_checkpoint(
                    "default", model.id, step, {f"m{i}": step / (i + 1) for i in range(METRICS)}
                )
        finally:
            await storage.close()

    asyncio.run(write())


def source_state(api: httpx.Client) -> dict[str, Any]:
    state = snapshot(api)
    for model_id, model in state.items():
        for checkpoint in model["checkpoints"]:
            listed = api.get(files_url(model_id, checkpoint["id"]))
            checkpoint["files"] = listed.json()["data"]
            for record in checkpoint["files"]:
                got = api.get(files_url(model_id, checkpoint["id"], record["path"]))
                assert got.status_code == 200, got.text
                assert hashlib.sha256(got.content).hexdigest() == record["sha256"]
    return state


def count(url: str, table: str) -> int:
    async def ask() -> int:
        connection = await asyncpg.connect(postgres_dsn(url))
        try:
            if await connection.fetchval("SELECT to_regclass($1)", table) is None:
                return 0
            return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await connection.close()

    return asyncio.run(ask())


def test_sqlite_moves_to_postgresql_and_s3_and_clients_carry_on(
    tmp_path: Path,
    postgres_url: str,
    moto_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The AWS variables an operator sets, for this process and the copy it starts.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    sqlite_url = f"sqlite:///{tmp_path / 'ckpt.db'}"
    local_blobs = str(tmp_path / "blobs")
    assert run("db", "upgrade", "--database-url", sqlite_url)[0] == 0
    key = add_key(sqlite_url)
    other_key = add_key(sqlite_url, "other-team")
    populate(sqlite_url)
    settings = Settings(database_url=sqlite_url, blob_url=local_blobs, gc_interval_seconds=0)
    with serving(settings) as server, server.client(key) as api:
        model = create_model(api, "with-files")
        ids = [register(api, model, step, {"loss": step / 10})["id"] for step in range(12)]
        for step, checkpoint in enumerate(ids[:6]):
            data = os.urandom(1000 + step)
            assert api.put(files_url(model, checkpoint, "w.bin"), content=data).status_code == 201
        delete_steps(api, model, [8])
        gone = create_model(api, "gone")
        register(api, gone, 1)
        assert api.delete(f"/preview/models/{gone}").status_code == 200
        # Step 8's tombstone purged (its cursor now expired), the deleted model's rows gone.
        gc = ("db", "gc", "--database-url", sqlite_url, "--blob-url", local_blobs)
        assert run(*gc, "--older-than", "0")[0] == 0
        delete_steps(api, model, [9])  # a tombstone
        first = list_page(api, model, limit=3)
        cursor = first["data"][-1]["id"]
        expected_next = list_page(api, model, limit=3, after=cursor)
        deleted_cursors = {
            index: api.get(
                f"/preview/models/{model}/checkpoints", params={"after": ids[index], "limit": 3}
            )
            for index in (8, 9)
        }
        before = source_state(api)
        with server.client(other_key) as other:
            other_model = create_model(other, "theirs")
            register(other, other_model, 5)
            other_before = snapshot(other)

    bucket = create_bucket(moto_endpoint)
    s3_url = f"s3://{bucket}/ckpt"
    copy = [
        "db",
        "copy",
        "--from",
        sqlite_url,
        "--to",
        postgres_url,
        "--blob-from",
        local_blobs,
        "--blob-to",
        s3_url,
    ]
    # Killed while it copies: the target holds part of the rows and says so.
    log = tmp_path / "copy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ckpt_registry.cli", *copy], stdout=out, stderr=out
        )
    deadline = time.monotonic() + 60
    while count(postgres_url, "checkpoint_metrics") == 0:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert count(postgres_url, "checkpoint_metrics") < METRICS * CHECKPOINTS
    assert copy_problem(postgres_url) is not None
    code, output = run("serve", "--database-url", postgres_url, "--blob-url", s3_url)
    assert code == 1 and "has not finished" in output

    code, output = run(*copy)
    assert code == 0, output
    assert "models compared on both sides: identical" in output
    assert "every digest verified" in output
    assert copy_problem(postgres_url) is None

    # A non-empty target is refused, and left as it was.
    fresh_sqlite = f"sqlite:///{tmp_path / 'other.db'}"
    assert run("db", "upgrade", "--database-url", fresh_sqlite)[0] == 0
    code, output = run("db", "copy", "--from", fresh_sqlite, "--to", postgres_url)
    assert code == 1 and "is not empty" in output

    moved = Settings(
        database_url=postgres_url,
        blob_url=s3_url,
        gc_interval_seconds=0,
        upload_ttl_seconds=MOTO_UPLOAD_TTL_SECONDS,
        presign=False,
    )
    with serving(moved) as server, server.client(key) as api:
        assert source_state(api) == before
        assert list_page(api, model, limit=3, after=cursor) == expected_next
        for index, answer in deleted_cursors.items():
            again = api.get(
                f"/preview/models/{model}/checkpoints", params={"after": ids[index], "limit": 3}
            )
            assert (again.status_code, again.json()) == (answer.status_code, answer.json())
        # The copy takes writes as any registry does: a new step, and a taken one conflicts.
        register(api, model, 100)
        duplicate = api.post(
            f"/preview/models/{model}/checkpoints", json={"step": 100, "metrics": {"loss": 9.0}}
        )
        assert duplicate.status_code == 409
        assert api.get(f"/preview/models/{gone}").status_code == 404
        with server.client(other_key) as other:
            assert snapshot(other) == other_before
            assert other.get(f"/preview/models/{model}").status_code == 404
