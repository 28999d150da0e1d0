"""Alembic environment for both databases; PostgreSQL runs through asyncpg under a lock."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ckpt_registry.storage.schema import metadata

# Several `ckpt serve` processes may start at once on one PostgreSQL; one migrates, the rest wait.
MIGRATION_LOCK_ID = 0x636B7074  # "ckpt"


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})"))
        context.run_migrations()


async def run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with)
    finally:
        await engine.dispose()


def run() -> None:
    url = context.config.attributes["database_url"]
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
    elif url.startswith("postgresql+asyncpg"):
        asyncio.run(run_async(url))
    else:
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        with engine.connect() as sync_connection:
            run_with(sync_connection)
        engine.dispose()


run()
