"""The migrations build exactly `schema.py` on SQLite and PostgreSQL, and downgrade cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from ckpt_registry.storage.migrate import downgrade, upgrade
from ckpt_registry.storage.schema import metadata
from ckpt_registry.storage.urls import backend_of, sqlalchemy_url
from tests import pg

TABLES = {
    "api_keys",
    "models",
    "checkpoints",
    "checkpoint_tombstones",
    "expired_cursors",
    "checkpoint_metrics",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ckpt.db'}"
        return
    admin_url = pg.postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
    with pg.fresh_database(admin_url, migrated=False) as url:
        yield url


def _inspect(connection: sa.Connection) -> tuple[list[Any], set[str], str | None]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    tables = set(sa.inspect(connection).get_table_names())
    return compare_metadata(context, metadata), tables, context.get_current_revision()


def inspect_database(url: str) -> tuple[list[Any], set[str], str | None]:
    """Autogenerate's differences from `schema.metadata`, the tables, and the Alembic revision."""
    if backend_of(url) == "sqlite":
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            with engine.connect() as connection:
                return _inspect(connection)
        finally:
            engine.dispose()

    async def run() -> tuple[list[Any], set[str], str | None]:
        async_engine = create_async_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
        try:
            async with async_engine.connect() as connection:
                return await connection.run_sync(_inspect)
        finally:
            await async_engine.dispose()

    return asyncio.run(run())


def test_upgrade_builds_the_schema_and_downgrade_undoes_it(empty_database: str) -> None:
    upgrade(empty_database)
    differences, tables, revision = inspect_database(empty_database)
    assert differences == []
    assert tables >= TABLES
    assert revision is not None

    downgrade(empty_database, "base")
    differences, tables, revision = inspect_database(empty_database)
    assert tables & TABLES == set()
    assert revision is None

    upgrade(empty_database)
    differences, tables, _ = inspect_database(empty_database)
    assert differences == []
    assert tables >= TABLES


def test_upgrade_is_idempotent(empty_database: str) -> None:
    """`ckpt serve` migrates at every start: running it on a migrated database changes nothing."""
    upgrade(empty_database)
    upgrade(empty_database)
    differences, _, _ = inspect_database(empty_database)
    assert differences == []
