"""Whether this code may serve a database: the schema's revision against the code's migrations, and
(PostgreSQL) the other servers connected to it, which name their version and schema in
`application_name`.

SQLite has no sessions to ask about: a newer server that upgraded the file is caught by the schema
check (an older one then refuses to start); upgrading a file an older server still serves is for the
operator to avoid (one machine: stop it first), as docs/operations.md says.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from .. import __version__
from .migrate import alembic_config
from .urls import backend_of, postgres_dsn, sqlite_path

APPLICATION = "ckpt-registry"
# `ckpt db copy` comments the target's `alembic_version` with this and the source until verified.
COPY_MARKER = "ckpt db copy unfinished, from "
_SCHEMA = re.compile(r" schema (\S+)$")


@functools.cache
def code_head() -> str:
    """The newest schema revision this code's migrations reach."""
    head = ScriptDirectory.from_config(alembic_config("sqlite:///unused.db")).get_current_head()
    assert head is not None
    return head


def application_name() -> str:
    """What this process's PostgreSQL sessions call themselves: version and schema, so that a
    server starting elsewhere can tell whether it may share the database (63 bytes at most)."""
    return f"{APPLICATION} {__version__} schema {code_head()}"[:63]


def known_revision(revision: str) -> bool:
    script = ScriptDirectory.from_config(alembic_config("sqlite:///unused.db"))
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def database_revision(url: str) -> str | None:
    """The schema revision stamped in the database; None when it has no schema yet."""
    if backend_of(url) == "sqlite":
        path = sqlite_path(url)
        if not path.exists():
            return None
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            try:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            except sqlite3.OperationalError:  # no such table: never migrated
                return None
        return str(row[0]) if row else None
    return asyncio.run(_postgres_revision(url))


async def _postgres_revision(url: str) -> str | None:
    connection = await asyncpg.connect(postgres_dsn(url), timeout=10)
    try:
        if await connection.fetchval("SELECT to_regclass('alembic_version')") is None:
            return None
        revision = await connection.fetchval("SELECT version_num FROM alembic_version")
        return str(revision) if revision is not None else None
    finally:
        await connection.close()


def schema_problem(url: str) -> str | None:
    """Why this code must not serve (or migrate) the database's schema, or None."""
    revision = database_revision(url)
    if revision is None or known_revision(revision):
        return None
    return (
        f"the database schema is at revision {revision}, newer than this ckpt-registry "
        f"{__version__} knows (its newest is {code_head()}): run the version that migrated it, "
        "or a newer one"
    )


def sqlite_write_problem(url: str) -> str | None:
    """Why the server could not write this SQLite database (its file, or the folder its WAL and
    shared-memory files go into, is read-only for this user), or None."""
    if backend_of(url) != "sqlite":
        return None
    path = sqlite_path(url).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        return (
            f"the database file {path} is read-only for this user: make it writable "
            f"(chmod u+w {path}) or run ckpt serve as its owner"
        )
    if folder.is_dir() and not os.access(folder, os.W_OK):
        return (
            f"the folder {folder} of the database is read-only for this user (SQLite writes its "
            "-wal and -shm files beside the database): make it writable or use another folder"
        )
    return None


def other_servers_problem(url: str) -> str | None:
    """Why another server on this PostgreSQL database forbids starting this one, or None: it runs
    another schema, or this one would migrate the schema beneath it."""
    if backend_of(url) != "postgresql":
        return None
    others, revision = asyncio.run(_other_servers(url))
    head = code_head()
    for name, client in others:
        found = _SCHEMA.search(name)
        theirs = found.group(1) if found else None
        if theirs is not None and theirs != head:
            return (
                f"another ckpt-registry is serving this database with schema {theirs} "
                f"({name!r} from {client}); this one ({__version__}) needs schema {head}: "
                "stop the others first, or run the same version"
            )
        if revision != head:
            return (
                f"another ckpt-registry ({name!r} from {client}) is serving this database and "
                f"this one would migrate its schema from {revision} to {head} beneath it: "
                "stop the others first"
            )
    return None


async def unfinished_copy(connection: Any) -> str | None:
    """The source of an unfinished `ckpt db copy` into this database, or None."""
    if await connection.fetchval("SELECT to_regclass('alembic_version')") is None:
        return None
    comment = await connection.fetchval("SELECT obj_description('alembic_version'::regclass)")
    if comment and comment.startswith(COPY_MARKER):
        return str(comment[len(COPY_MARKER) :])
    return None


def copy_problem(url: str) -> str | None:
    """Why the database may not be served yet: a `ckpt db copy` into it has not finished."""
    if backend_of(url) != "postgresql":
        return None

    async def ask() -> str | None:
        connection = await asyncpg.connect(postgres_dsn(url), timeout=10)
        try:
            return await unfinished_copy(connection)
        finally:
            await connection.close()

    source = asyncio.run(ask())
    if source is None:
        return None
    return (
        f"a ckpt db copy from {source} into this database has not finished: run the same "
        "ckpt db copy again to complete it"
    )


async def _other_servers(url: str) -> tuple[list[tuple[str, str]], str | None]:
    connection = await asyncpg.connect(postgres_dsn(url), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT application_name, coalesce(host(client_addr), 'local') AS client "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name LIKE $1",
            APPLICATION + "%",
        )
    finally:
        await connection.close()
    revision = await _postgres_revision(url)
    return [(row["application_name"], row["client"]) for row in rows], revision
