"""Keys are stored only as SHA-256 hashes: the database, read as bytes (SQLite, with its WAL) or as
rows (PostgreSQL), holds no key, and a key is found by its hash alone."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from ckpt_registry.storage.urls import postgres_dsn, sqlite_path
from tests.cli.test_server_cli import run
from tests.conftest import RunningServer


def stored_text(database_url: str) -> bytes:
    """Everything the database holds: the SQLite file and its WAL as bytes, or every PostgreSQL row
    of every table as text."""
    if database_url.startswith("sqlite"):
        path = sqlite_path(database_url)
        files = [path, Path(f"{path}-wal")]
        return b"".join(file.read_bytes() for file in files if file.exists())

    async def dump() -> bytes:
        connection = await asyncpg.connect(postgres_dsn(database_url))
        try:
            tables = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
            rows = []
            for table in tables:
                name = table["tablename"]
                rows += await connection.fetch(f'SELECT t::text AS row FROM "{name}" t')
            return "\n".join(row["row"] for row in rows).encode()
        finally:
            await connection.close()

    return asyncio.run(dump())


def test_the_database_holds_only_hashes_of_keys(server: RunningServer) -> None:
    keys = []
    for flags in ((), ("--read-only",)):
        code, out, _ = run(
            "keys", "create", "--entity", "team", "--database-url", server.database_url, *flags
        )
        assert code == 0
        keys.append(out.strip().splitlines()[-1])
    for key in keys:  # each key works, so the server can tell it from its hash alone
        with server.client(key) as client:
            assert client.get("/preview/key").json()["entity"] == "team"

    held = stored_text(server.database_url)

    for key in keys:
        assert key.encode() not in held
        assert key.removeprefix("ckpt_").encode() not in held
        assert key[-20:].encode() not in held
        assert hashlib.sha256(key.encode()).hexdigest().encode() in held
