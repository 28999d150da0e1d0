"""Shared fixtures: a fresh migrated database per test (SQLite, and PostgreSQL when configured), a
real server on a free loopback port, and keys.

Set CKPT_TEST_POSTGRES_URL (an admin URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres) to run
every database-backed test on PostgreSQL too; under CI=true it is required.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.server import Settings, create_app
from ckpt_registry.storage import open_storage
from ckpt_registry.storage.migrate import upgrade

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated once per session; each test gets a copy (a migration per test is slow)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "ckpt.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    from . import pg  # PostgreSQL helpers are only needed for that backend

    admin_url = pg.postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
    with pg.fresh_database(admin_url) as url:
        yield url


def add_key(
    database_url: str, entity: str = "default", name: str = "test", *, read_only: bool = False
) -> str:
    """Create a key directly in the database, as `ckpt keys create` does; return the key."""
    key = generate_key()

    async def create() -> None:
        storage = open_storage(database_url)
        await storage.open()
        try:
            await storage.create_key(entity, name, hash_key(key), read_only=read_only)
        finally:
            await storage.close()

    asyncio.run(create())
    return key


@pytest.fixture
def api_key(database_url: str) -> str:
    return add_key(database_url, "default")


@dataclass
class RunningServer:
    url: str  # ends in /v1
    database_url: str

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


class ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@contextmanager
def serving(settings: Settings) -> Iterator[RunningServer]:
    """A real uvicorn server for the app on a free loopback port, in a thread, stopped on exit."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws="none",
        lifespan="on",
    )
    server = ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not server.started:
            raise RuntimeError("test server did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield RunningServer(f"http://127.0.0.1:{port}/v1", settings.database_url)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive(), "test server did not stop"


@pytest.fixture
def blob_url(tmp_path: Path) -> str:
    return str(tmp_path / "blobs")


@pytest.fixture
def settings(database_url: str, blob_url: str) -> Settings:
    return Settings(database_url=database_url, blob_url=blob_url, gc_interval_seconds=0)


@pytest.fixture
def server(settings: Settings) -> Iterator[RunningServer]:
    with serving(settings) as running:
        yield running


@pytest.fixture
def server_url(server: RunningServer) -> str:
    return server.url


@pytest.fixture
def api(server: RunningServer, api_key: str) -> Iterator[httpx.Client]:
    """An HTTP client for the server, authenticated as entity `default`."""
    with server.client(api_key) as client:
        yield client


@pytest.fixture
def model_id(api: httpx.Client) -> str:
    response = api.post(
        "/preview/models", json={"project": "proj", "name": "model", "base_model": "base"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])
