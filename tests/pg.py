"""PostgreSQL for the tests: the admin URL from the environment, a fresh migrated database per test,
`ckpt serve` subprocesses, and a throwaway cluster to stop and start.

The schema is migrated once per process into a template database; each test then gets
`CREATE DATABASE ... TEMPLATE` (22 ms against 66 ms for migrating, docs/postgresql.md) and the
database is dropped after the test with `WITH (FORCE)`, so a server still holding connections cannot
keep it alive.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from ckpt_registry.storage.migrate import upgrade

T = TypeVar("T")

ENV = "CKPT_TEST_POSTGRES_URL"
PREFIX = "ckpt_test_"


class PostgresNotConfigured(RuntimeError):
    pass


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def postgres_admin_url() -> str | None:
    """The admin URL from CKPT_TEST_POSTGRES_URL; None when unset (the caller skips).

    Under CI=true an unset URL is an error, so a misconfigured CI cannot pass by skipping.
    """
    url = os.environ.get(ENV, "").strip()
    if url:
        return url
    if in_ci():
        raise PostgresNotConfigured(
            f'CI=true but {ENV} is not set: run `eval "$(.ci/pg-setup)"` first, or set it to an '
            "admin URL such as postgresql://postgres@127.0.0.1:5432/postgres"
        )
    return None


def database_url(admin_url: str, name: str) -> str:
    """`admin_url` pointing at database `name` instead."""
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


class _Admin:
    """One admin connection on a private event loop thread, usable from sync and async tests."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._connection: Any = None
        self.template: str | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=120)

    async def _execute(self, sql: str) -> None:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self.admin_url, timeout=10)
        await self._connection.execute(sql)

    def execute(self, sql: str) -> None:
        self.run(self._execute(sql))

    def ensure_template(self) -> str:
        with self._lock:
            if self.template is None:
                name = f"{PREFIX}tpl_{uuid.uuid4().hex[:12]}"
                self.execute(f"CREATE DATABASE {name}")
                # Alembic's env runs its own event loop: keep it off any loop the caller runs.
                migrate = threading.Thread(
                    target=upgrade, args=(database_url(self.admin_url, name),)
                )
                migrate.start()
                migrate.join()
                self.template = name
            return self.template

    def close(self) -> None:
        async def shut() -> None:
            if self.template is not None:
                await self._execute(f"DROP DATABASE IF EXISTS {self.template} WITH (FORCE)")
            if self._connection is not None:
                await self._connection.close()

        try:
            self.run(shut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


_admins: dict[str, _Admin] = {}
_admins_lock = threading.Lock()


def _admin(admin_url: str) -> _Admin:
    with _admins_lock:
        admin = _admins.get(admin_url)
        if admin is None:
            admin = _admins[admin_url] = _Admin(admin_url)
            if len(_admins) == 1:
                atexit.register(_close_admins)
        return admin


def _close_admins() -> None:
    while _admins:
        _admins.popitem()[1].close()


def create_database(admin_url: str, *, migrated: bool = True) -> str:
    """A new database (a copy of the migrated template, or empty); its URL."""
    admin = _admin(admin_url)
    name = f"{PREFIX}{uuid.uuid4().hex[:16]}"
    if migrated:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {admin.ensure_template()}")
    else:
        admin.execute(f"CREATE DATABASE {name}")
    return database_url(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    assert name and name.startswith(PREFIX), name
    _admin(admin_url).execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def terminate_connections(admin_url: str, url: str) -> int:
    """Kill every backend connected to the database of `url` (an outage as the server sees it)."""
    name = make_url(url).database

    async def terminate() -> int:
        admin = _admin(admin_url)
        await admin._execute("SELECT 1")
        rows = await admin._connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        return len(rows)

    return _admin(admin_url).run(terminate())


@contextmanager
def fresh_database(admin_url: str, *, migrated: bool = True) -> Iterator[str]:
    """A database for one test, dropped afterwards."""
    url = create_database(admin_url, migrated=migrated)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


# Real server processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A `ckpt serve` subprocess on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_servers(
    database_url: str, count: int, log_dir: Path, env: dict[str, str] | None = None
) -> list[ServerProcess]:
    """Start `count` `ckpt serve` processes on one database; return once all answer /v1/health."""
    servers = []
    for index in range(count):
        port = free_port()
        log = log_dir / f"server-{index}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ckpt_registry.cli",
                    "serve",
                    "--database-url",
                    database_url,
                    "--port",
                    str(port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                # One blob folder for all of them, as servers sharing a database share a store.
                env={**os.environ, "CKPT_BLOB_URL": str(log_dir / "blobs"), **(env or {})},
            )
        servers.append(ServerProcess(process, port, log))
    deadline = time.monotonic() + 60
    try:
        for server in servers:
            while True:
                if server.process.poll() is not None:
                    raise RuntimeError(f"ckpt serve exited early:\n{server.log_tail()}")
                try:
                    if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ckpt serve did not start:\n{server.log_tail()}")
                time.sleep(0.05)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


# A PostgreSQL of our own, to stop and start -----------------------------------------------------


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl live (Debian keeps them off PATH), or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory on its own port, free to stop and start.

    initdb refuses to run as root, so under root the cluster belongs to the `postgres` user.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="ckpt-pg-"))
        self.data = self.directory / "data"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            self._as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as_owner, str(self.bindir / program), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.directory} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
