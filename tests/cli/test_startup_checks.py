"""`ckpt serve` refuses to start, with one clear line and nothing changed, on a schema newer than its
code, a blob store it cannot write, or (PostgreSQL) another server of another schema on the
database; a server of the same version alongside is welcome."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner

from ckpt_registry.cli.main import cli
from ckpt_registry.storage.compat import code_head, database_revision
from ckpt_registry.storage.migrate import downgrade
from ckpt_registry.storage.urls import postgres_dsn, sqlite_path
from tests import pg


def serve(database_url: str, blob_url: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        ["serve", "--database-url", database_url, "--blob-url", blob_url, "--port", "1"],
    )
    return result.exit_code, result.output


def stamp(database_url: str, revision: str) -> None:
    """The schema as a newer ckpt-registry would leave it."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(database_url)) as db:
            db.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        return

    async def update() -> None:
        connection = await asyncpg.connect(postgres_dsn(database_url))
        try:
            await connection.execute("UPDATE alembic_version SET version_num = $1", revision)
        finally:
            await connection.close()

    asyncio.run(update())


def test_a_schema_newer_than_the_code_is_refused(database_url: str, tmp_path: Path) -> None:
    stamp(database_url, "0099")

    code, output = serve(database_url, str(tmp_path / "blobs"))

    assert code == 1
    assert len(output.strip().splitlines()) == 1  # one line, no traceback
    assert "schema is at revision 0099, newer than this ckpt-registry" in output
    assert f"its newest is {code_head()}" in output
    assert database_revision(database_url) == "0099"  # nothing migrated


def test_a_blob_store_that_cannot_be_written_is_refused(database_url: str, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the blob folder should be")

    code, output = serve(database_url, str(not_a_folder / "blobs"))

    assert code == 1
    assert output.startswith("Error: not starting: the blob store")
    assert "is not writable" in output
    assert "Traceback" not in output


@pytest.fixture
def postgres_url() -> Iterator[str]:
    admin_url = pg.postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
    with pg.fresh_database(admin_url) as url:
        yield url


async def hold(url: str, application_name: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        postgres_dsn(url), server_settings={"application_name": application_name}
    )


def test_another_server_with_another_schema_on_postgresql_is_refused(
    postgres_url: str, tmp_path: Path
) -> None:
    loop = asyncio.new_event_loop()
    other = loop.run_until_complete(hold(postgres_url, "ckpt-registry 9.0.0 schema 0099"))
    try:
        code, output = serve(postgres_url, str(tmp_path / "blobs"))
    finally:
        loop.run_until_complete(other.close())
        loop.close()

    assert code == 1
    assert "another ckpt-registry is serving this database with schema 0099" in output
    assert "'ckpt-registry 9.0.0 schema 0099'" in output


def test_an_older_server_is_not_migrated_beneath(postgres_url: str, tmp_path: Path) -> None:
    previous = str(int(code_head()) - 1).zfill(4)
    downgrade(postgres_url, previous)
    loop = asyncio.new_event_loop()
    # As servers from before sessions named their schema call themselves.
    other = loop.run_until_complete(hold(postgres_url, "ckpt-registry"))
    try:
        code, output = serve(postgres_url, str(tmp_path / "blobs"))
    finally:
        loop.run_until_complete(other.close())
        loop.close()

    assert code == 1
    assert f"would migrate its schema from {previous} to {code_head()} beneath it" in output
    assert database_revision(postgres_url) == previous
