"""A `ckpt serve` on PostgreSQL during outages: fast 503s with a reason, and recovery without restart.

The database is a throwaway cluster of our own (stopped and started freely), or, for killed
connections, a fresh database on the shared server whose backends we terminate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import open_storage
from ckpt_registry.storage.migrate import upgrade
from tests import pg

# Measures latency or stops a shared service: run alone, after the parallel run (scripts/test).
pytestmark = pytest.mark.serial

TIMEOUT = 2.0  # seconds: the server's connect and statement timeouts here
SERVER_ENV = {"CKPT_PG_CONNECT_TIMEOUT": str(TIMEOUT), "CKPT_PG_STATEMENT_TIMEOUT": str(TIMEOUT)}


async def _create_key(database_url: str) -> str:
    key = generate_key()
    storage = open_storage(database_url)
    await storage.open()
    try:
        await storage.create_key("default", "test", hash_key(key))
    finally:
        await storage.close()
    return key


@pytest.fixture(scope="module")
def cluster() -> Iterator[pg.ThrowawayCluster]:
    pg.postgres_admin_url()  # under CI, PostgreSQL must be configured: fail rather than skip
    bindir = pg.postgres_bindir()
    if bindir is None:
        if pg.in_ci():
            pytest.fail("the outage tests need PostgreSQL's initdb and pg_ctl")
        pytest.skip("the outage tests need PostgreSQL's initdb and pg_ctl")
    throwaway = pg.ThrowawayCluster(bindir)
    try:
        throwaway.start()
        yield throwaway
    finally:
        throwaway.destroy()


@pytest.fixture(scope="module")
def served(
    cluster: pg.ThrowawayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[pg.ServerProcess, str, str]]:
    """One server on the throwaway cluster; (server, key, database URL)."""

    async def create() -> None:
        connection = await asyncpg.connect(cluster.admin_url)
        await connection.execute("CREATE DATABASE ckpt")
        await connection.close()

    asyncio.run(create())
    url = pg.database_url(cluster.admin_url, "ckpt")
    upgrade(url)
    key = asyncio.run(_create_key(url))
    (server,) = pg.start_servers(url, 1, tmp_path_factory.mktemp("outage"), SERVER_ENV)
    try:
        yield server, key, url
    finally:
        server.stop()


def timed(call: object) -> tuple[httpx.Response, float]:
    assert callable(call)
    started = time.monotonic()
    response = call()
    assert isinstance(response, httpx.Response)
    return response, time.monotonic() - started


def wait_until_ok(client: httpx.Client, path: str, seconds: float = 30) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        response = client.get(path)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail.startswith("database unavailable: "), detail


def test_database_down_gives_fast_503s_and_the_server_recovers_by_itself(
    cluster: pg.ThrowawayCluster, served: tuple[pg.ServerProcess, str, str]
) -> None:
    server, key, _ = served
    with server.client(key) as api, server.client() as anonymous:
        created = api.post("/preview/models", json={"project": "p", "name": "m", "base_model": "b"})
        model_id = created.json()["id"]
        path = f"/preview/models/{model_id}/checkpoints"
        for step in range(3):
            assert api.post(path, json={"step": step, "metrics": {"loss": step}}).status_code == 201
        before = api.get(path).json()
        assert anonymous.get("/system-check").status_code == 200

        cluster.stop()
        try:
            requests = [
                lambda: api.get(path),
                lambda: api.get(path, params={"limit": 1, "order": "desc"}),
                lambda: api.get(f"/preview/models/{model_id}"),
                lambda: api.post(path, json={"step": 9, "metrics": {}}),
                lambda: api.request("DELETE", path, json={"steps": [0]}),
                lambda: api.get("/preview/models"),
            ]
            for request in requests:
                response, elapsed = timed(request)
                assert_unavailable(response)
                assert elapsed < TIMEOUT, f"took {elapsed:.2f}s"

            check, elapsed = timed(lambda: anonymous.get("/system-check"))
            assert check.status_code == 503
            assert check.json()["status"] == "error"
            assert check.json()["checks"]["database"].startswith("database unavailable: ")
            assert elapsed < TIMEOUT
            assert anonymous.get("/health").status_code == 200  # the process itself is fine
        finally:
            cluster.start()

        assert wait_until_ok(anonymous, "/system-check").json() == {
            "status": "ok",
            "checks": {"database": "ok", "blobs": "ok"},
        }
        assert wait_until_ok(api, path).json() == before  # nothing was lost or half-written
        assert api.post(path, json={"step": 9, "metrics": {}}).status_code == 201
        assert server.process.poll() is None, "the server must recover without a restart"


def test_a_stuck_statement_gives_503_after_the_statement_timeout(
    served: tuple[pg.ServerProcess, str, str],
) -> None:
    server, key, url = served
    with server.client(key) as api:
        created = api.post("/preview/models", json={"project": "p", "name": "s", "base_model": "b"})
        model_id = created.json()["id"]
        path = f"/preview/models/{model_id}/checkpoints"
        assert api.get(path).status_code == 200

        locked, release = threading.Event(), threading.Event()

        async def hold_lock() -> None:
            connection = await asyncpg.connect(url)
            try:
                async with connection.transaction():
                    await connection.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
                    locked.set()
                    await asyncio.to_thread(release.wait, 30)
            finally:
                await connection.close()

        holder = threading.Thread(target=asyncio.run, args=(hold_lock(),))
        holder.start()
        try:
            assert locked.wait(10)
            response, elapsed = timed(lambda: api.get(path))
            assert_unavailable(response)
            assert "statement timeout" in response.json()["detail"]
            # The list's fast path hands failures to the full route, which tries once more.
            assert TIMEOUT * 0.9 < elapsed < TIMEOUT * 2 + 2, f"took {elapsed:.2f}s"
        finally:
            release.set()
            holder.join(timeout=30)
        assert api.get(path).status_code == 200


@pytest.fixture
def shared_server(tmp_path: Path) -> Iterator[tuple[pg.ServerProcess, str, str, str]]:
    """A server on a fresh database of the shared PostgreSQL; (server, key, url, admin url)."""
    admin_url = pg.postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
    with pg.fresh_database(admin_url) as url:
        key = asyncio.run(_create_key(url))
        (server,) = pg.start_servers(url, 1, tmp_path, SERVER_ENV)
        try:
            yield server, key, url, admin_url
        finally:
            server.stop()


def test_killed_connections_are_replaced_without_failing_reads(
    shared_server: tuple[pg.ServerProcess, str, str, str],
) -> None:
    server, key, url, admin_url = shared_server
    with server.client(key) as api:
        model_id = api.post(
            "/preview/models", json={"project": "p", "name": "k", "base_model": "b"}
        ).json()["id"]
        path = f"/preview/models/{model_id}/checkpoints"
        assert api.post(path, json={"step": 0, "metrics": {}}).status_code == 201

        for round_ in range(3):
            assert pg.terminate_connections(admin_url, url) >= 1
            # Reads retry once on a fresh connection: the kill is invisible to them.
            for _ in range(5):
                response = api.get(path)
                assert response.status_code == 200, response.text
                assert api.get(f"/preview/models/{model_id}").status_code == 200
            # A write is never retried behind the caller's back: 503 at worst, then it works.
            response = api.post(path, json={"step": round_ + 1, "metrics": {}})
            assert response.status_code in (201, 503), response.text
            if response.status_code == 503:
                assert_unavailable(response)
                response = api.post(path, json={"step": round_ + 1, "metrics": {}})
                assert response.status_code == 201, response.text
        steps = [item["step"] for item in api.get(path).json()["data"]]
        assert steps == [0, 1, 2, 3]
