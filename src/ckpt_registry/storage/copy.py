"""`ckpt db copy`: every row of a SQLite database into a PostgreSQL one, ids unchanged, so clients keep
their ids and cursors; then counts and a digest of each model's checkpoints compared on both sides.

The source is read in one read transaction (one consistent state, even if a server still writes to
it). The target must be empty, or hold an unfinished copy of the same source: its `alembic_version`
table carries a comment naming the source until the copy has been verified, so a copy cut short is
simply run again (rows already there are skipped) and `ckpt serve` refuses the database meanwhile.
Resumable uploads are not copied: their staged bytes live in the old blob store; clients start them
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa

from .compat import COPY_MARKER, code_head, unfinished_copy
from .migrate import upgrade
from .schema import metadata
from .sqlite.backend import parse_timestamp
from .urls import backend_of, postgres_dsn, redacted, sqlite_path

BATCH_ROWS = 5000
# Parents before children; `uploads` stays behind (see the module's docstring).
TABLES = (
    "api_keys",
    "models",
    "checkpoints",
    "checkpoint_tombstones",
    "expired_cursors",
    "checkpoint_metrics",
    "blobs",
    "checkpoint_files",
)


class CopyRefused(Exception):
    """The copy did not start (or did not verify): the message says why and what to do."""


@dataclass
class CopySummary:
    rows: dict[str, int] = field(default_factory=dict)
    models_compared: int = 0
    sha256s: list[str] = field(default_factory=list)


OnRows = Callable[[str, int, int], None]  # table, rows just copied, the table's total


def _converters(table: sa.Table) -> list[Callable[[Any], Any]]:
    """SQLite's stored text to what asyncpg takes, column by column."""

    def timestamp(value: str | None) -> datetime | None:
        return None if value is None else parse_timestamp(value)

    def plain(value: Any) -> Any:
        return value

    return [
        timestamp
        if isinstance(column.type, sa.DateTime)
        else bool
        if isinstance(column.type, sa.Boolean)  # SQLite stores 0 and 1
        else plain
        for column in table.columns
    ]


def _batches(db: sqlite3.Connection, table: sa.Table) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows in primary-key order, a batch at a time (keyset, never OFFSET)."""
    columns = [column.name for column in table.columns]
    keys = [column.name for column in table.primary_key.columns]
    positions = [columns.index(key) for key in keys]
    select = f"SELECT {', '.join(columns)} FROM {table.name}"  # names from our own metadata
    order = f" ORDER BY {', '.join(keys)} LIMIT {BATCH_ROWS}"
    after = f" WHERE ({', '.join(keys)}) > ({', '.join('?' * len(keys))})"
    convert = _converters(table)
    last: list[Any] | None = None
    while True:
        rows = db.execute(select + (after if last else "") + order, last or ()).fetchall()
        if not rows:
            return
        yield [tuple(f(v) for f, v in zip(convert, row, strict=True)) for row in rows]
        last = [rows[-1][position] for position in positions]


def source_counts(db: sqlite3.Connection) -> dict[str, int]:
    return {name: db.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in TABLES}


async def target_counts(connection: Any) -> dict[str, int]:
    return {name: await connection.fetchval(f"SELECT count(*) FROM {name}") for name in TABLES}


def _digest(rows: list[tuple[Any, ...]]) -> str:
    """Of a model's checkpoints (id, step, metrics text, both times), in step order."""
    hasher = hashlib.sha256()
    for checkpoint_id, step, metrics, created_at, updated_at in rows:
        for moment in (created_at, updated_at):
            if isinstance(moment, str):
                moment = parse_timestamp(moment)
            hasher.update(moment.astimezone(UTC).isoformat().encode())
        hasher.update(f"|{checkpoint_id!s}|{step}|{metrics}\n".encode())
    return hasher.hexdigest()


async def copy_database(from_url: str, to_url: str, on_rows: OnRows | None = None) -> CopySummary:
    if backend_of(from_url) != "sqlite" or backend_of(to_url) != "postgresql":
        raise CopyRefused(
            "ckpt db copy moves a SQLite database into PostgreSQL: --from sqlite:///"
            "PATH --to postgresql://..."
        )
    source_path = sqlite_path(from_url)
    if not source_path.exists():
        raise CopyRefused(f"there is no database at {source_path}")
    with contextlib.closing(sqlite3.connect(source_path, timeout=30)) as db:
        db.execute("BEGIN")  # one read transaction: one consistent state of the source
        revision = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        if revision != code_head():
            raise CopyRefused(
                f"the source's schema is {revision}, not {code_head()}: run "
                f"ckpt db upgrade --database-url {redacted(from_url)} first"
            )
        await asyncio.to_thread(upgrade, to_url)  # Alembic runs a loop of its own
        connection = await asyncpg.connect(postgres_dsn(to_url), timeout=10)
        try:
            await _claim(connection, str(source_path.resolve()))
            summary = CopySummary(rows=source_counts(db))
            for name in TABLES:
                await _copy_table(db, connection, metadata.tables[name], summary, on_rows)
            await _verify(db, connection, summary)
            summary.sha256s = [
                row[0]
                for row in db.execute("SELECT DISTINCT sha256 FROM checkpoint_files ORDER BY 1")
            ]
        finally:
            await connection.close()
    return summary


async def finish_copy(to_url: str) -> None:
    """Mark the target whole (after its blobs, if any, were copied): servers may use it."""
    connection = await asyncpg.connect(postgres_dsn(to_url), timeout=10)
    try:
        await connection.execute("COMMENT ON TABLE alembic_version IS NULL")
    finally:
        await connection.close()


async def _claim(connection: Any, source: str) -> None:
    """Refuse a target that holds data of its own; mark an empty one as a copy in progress."""
    unfinished = await unfinished_copy(connection)
    if unfinished is not None and unfinished != source:
        raise CopyRefused(f"the target holds an unfinished copy of another database ({unfinished})")
    if unfinished is None:
        counts = await target_counts(connection)
        if any(counts.values()):
            held = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
            raise CopyRefused(f"the target database is not empty ({held}): name an empty one")
        await connection.execute(
            f"COMMENT ON TABLE alembic_version IS {_quoted(COPY_MARKER + source)}"
        )


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _copy_table(
    db: sqlite3.Connection,
    connection: Any,
    table: sa.Table,
    summary: CopySummary,
    on_rows: OnRows | None,
) -> None:
    total = summary.rows[table.name]
    already = await connection.fetchval(f"SELECT count(*) FROM {table.name}")
    if already == total:
        if on_rows is not None:
            on_rows(table.name, total, total)  # copied whole before an interruption
        return
    columns = [column.name for column in table.columns]
    insert = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        f"({', '.join(f'${i}' for i in range(1, len(columns) + 1))}) ON CONFLICT DO NOTHING"
    )
    for batch in _batches(db, table):
        # Each batch commits alone. Into an empty table, COPY (600,000 rows: 30 s with INSERT);
        # after an interruption, INSERT skipping the rows a batch copied before.
        async with connection.transaction():
            if already == 0:
                await connection.copy_records_to_table(table.name, records=batch, columns=columns)
            else:
                await connection.executemany(insert, batch)
        if on_rows is not None:
            on_rows(table.name, len(batch), total)


async def _verify(db: sqlite3.Connection, connection: Any, summary: CopySummary) -> None:
    copied = await target_counts(connection)
    if copied != summary.rows:
        differ = [
            f"{n}: {summary.rows[n]} -> {copied[n]}" for n in TABLES if copied[n] != summary.rows[n]
        ]
        raise CopyRefused("the counts differ after the copy: " + "; ".join(differ))
    query = "SELECT id, step, metrics, created_at, updated_at FROM checkpoints WHERE model_id = {} ORDER BY step"
    for (model_id,) in db.execute("SELECT id FROM models ORDER BY id").fetchall():
        source = _digest(db.execute(query.format("?"), (model_id,)).fetchall())
        target = _digest(
            [tuple(row) for row in await connection.fetch(query.format("$1"), model_id)]
        )
        if source != target:
            raise CopyRefused(f"model {model_id}'s checkpoints differ after the copy")
        summary.models_compared += 1
