"""`ckpt serve`, `ckpt db` and `ckpt keys`: the commands that work on the server's database and
need the ``[server]`` extra; `cli/main.py` loads this module only when one of them runs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import click
import sqlalchemy.exc
from pydantic import ValidationError
from rich.console import Console

from ..backup import BackupRefused, backup, restore
from ..blobs import default_blob_url, open_blob_store
from ..blobs.copy import copy_store
from ..blobs.errors import BlobError
from ..collector import Collected, collect
from ..keys import generate_key, hash_key
from ..storage import Storage, open_storage
from ..storage.compat import (
    copy_problem,
    other_servers_problem,
    schema_problem,
    sqlite_write_problem,
)
from ..storage.copy import CopyRefused, copy_database, finish_copy
from ..storage.errors import StorageError
from ..storage.migrate import downgrade, upgrade
from ..storage.urls import UnsupportedDatabaseUrl, redacted

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite:///./ckpt.db"

database_url_option = click.option(
    "--database-url",
    envvar="CKPT_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (env CKPT_DATABASE_URL).",
)


blob_url_option = click.option(
    "--blob-url",
    envvar="CKPT_BLOB_URL",
    default=None,
    help="Where file contents live: a folder or s3://BUCKET/PREFIX (env CKPT_BLOB_URL; "
    "default: a folder beside the SQLite file, or ./ckpt-blobs).",
)


class Group(click.Group):
    """A group whose commands report expected failures as one line on stderr, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StorageError, UnsupportedDatabaseUrl) as exc:
            raise click.ClickException(str(exc)) from exc


class ServerCommand(click.Command):
    """A command that reports expected failures as one line, as :class:`Group` does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StorageError, UnsupportedDatabaseUrl) as exc:
            raise click.ClickException(str(exc)) from exc


def with_storage(url: str, action: Callable[[Storage], Awaitable[T]]) -> T:
    async def run() -> T:
        storage = open_storage(url)
        await storage.open()
        try:
            return await action(storage)
        finally:
            await storage.close()

    return asyncio.run(run())


@click.command(
    cls=ServerCommand,
    epilog="Example: ckpt serve --database-url sqlite:///./ckpt.db --port 8000",
)
@database_url_option
@blob_url_option
@click.option("--host", envvar="CKPT_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="CKPT_PORT", default=8000, show_default=True, type=int)
@click.option("--workers", envvar="CKPT_WORKERS", default=1, show_default=True, type=int)
@click.option(
    "--access-log/--no-access-log",
    envvar="CKPT_ACCESS_LOG",
    default=False,
    show_default=True,
    help="Log one line per request: method, route template, status, duration, request id.",
)
@click.option(
    "--log-format",
    envvar="CKPT_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line (env CKPT_LOG_FORMAT).",
)
@click.option(
    "--metrics",
    envvar="CKPT_METRICS",
    default="on",
    show_default=True,
    help="Prometheus metrics: off, on (GET /metrics on --port) or a port to serve them on "
    "alone (env CKPT_METRICS).",
)
@click.option(
    "--header-timeout",
    envvar="CKPT_HEADER_TIMEOUT_SECONDS",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds a request's headers may take to arrive; 408 and closed after "
    "(env CKPT_HEADER_TIMEOUT_SECONDS).",
)
@click.option(
    "--min-body-rate",
    envvar="CKPT_MIN_BODY_RATE",
    default=240.0,
    show_default=True,
    type=float,
    help="Bytes per second a request body must average after the grace period; 408 and "
    "closed below; 0 turns it off (env CKPT_MIN_BODY_RATE).",
)
@click.option(
    "--body-rate-grace",
    envvar="CKPT_BODY_RATE_GRACE_SECONDS",
    default=5.0,
    show_default=True,
    type=float,
    help="Seconds a body may arrive slower than --min-body-rate "
    "(env CKPT_BODY_RATE_GRACE_SECONDS).",
)
@click.option(
    "--max-connections",
    envvar="CKPT_MAX_CONNECTIONS",
    default=1000,
    show_default=True,
    type=int,
    help="Open connections per server process; more get 503 with Retry-After "
    "(env CKPT_MAX_CONNECTIONS).",
)
@click.option(
    "--rate-limit",
    envvar="CKPT_RATE_LIMIT",
    default=None,
    help="Requests each API key may make per server process, such as 10/s, 600/min or 5000/h; "
    "429 with Retry-After above (env CKPT_RATE_LIMIT; default: no limit).",
)
@click.option(
    "--rate-limit-burst",
    envvar="CKPT_RATE_LIMIT_BURST",
    default=None,
    type=int,
    help="Requests a key may make at once before the rate applies (env CKPT_RATE_LIMIT_BURST; "
    "default: the rate's number).",
)
@click.option(
    "--api-docs/--no-api-docs",
    envvar="CKPT_API_DOCS",
    default=False,
    show_default=True,
    help="Serve the interactive API pages /docs and /redoc (they load scripts from a public CDN); "
    "/openapi.json is always served.",
)
def serve(
    database_url: str,
    blob_url: str | None,
    host: str,
    port: int,
    workers: int,
    access_log: bool,
    log_format: str,
    metrics: str,
    header_timeout: float,
    min_body_rate: float,
    body_rate_grace: float,
    max_connections: int,
    rate_limit: str | None,
    rate_limit_burst: int | None,
    api_docs: bool,
) -> None:
    """Migrate the database, make a first key if there is none, and serve the API."""
    from ..server import Settings
    from ..server.serving import exec_server

    if blob_url:
        os.environ["CKPT_BLOB_URL"] = blob_url
    if rate_limit:
        os.environ["CKPT_RATE_LIMIT"] = rate_limit
    if rate_limit_burst is not None:
        os.environ["CKPT_RATE_LIMIT_BURST"] = str(rate_limit_burst)
    os.environ.update(
        CKPT_DATABASE_URL=database_url,
        CKPT_HOST=host,
        CKPT_PORT=str(port),
        CKPT_WORKERS=str(workers),
        CKPT_ACCESS_LOG="true" if access_log else "false",
        CKPT_LOG_FORMAT=log_format,
        CKPT_METRICS=metrics,
        CKPT_HEADER_TIMEOUT_SECONDS=str(header_timeout),
        CKPT_MIN_BODY_RATE=str(min_body_rate),
        CKPT_BODY_RATE_GRACE_SECONDS=str(body_rate_grace),
        CKPT_MAX_CONNECTIONS=str(max_connections),
        CKPT_API_DOCS="true" if api_docs else "false",
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            (f"CKPT_{'_'.join(map(str, error['loc'])).upper()}: " if error["loc"] else "")
            + str(error["msg"]).removeprefix("Value error, ")
            for error in exc.errors()
        )
        raise click.ClickException(f"invalid settings: {problems}") from None
    try:
        problem = (
            sqlite_write_problem(database_url)
            or schema_problem(database_url)
            or copy_problem(database_url)
            or other_servers_problem(database_url)
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problem = f"cannot reach the database at {redacted(database_url)}: {exc}"
    if problem is not None:
        raise click.ClickException(f"not starting: {problem}")
    try:
        upgrade(database_url)
    except sqlalchemy.exc.OperationalError as exc:
        # One line, not Alembic's traceback: a database that cannot be written (a read-only mount,
        # a file of another user that `os.access` could not tell), locked or gone.
        raise click.ClickException(
            f"not starting: the database could not be migrated: {exc.orig}; "
            "check that this user can write it and its folder"
        ) from None
    if host in ("0.0.0.0", "::", ""):
        click.echo(
            f"warning: listening on every network interface ({host or '*'}): anyone who can reach "
            "this machine can reach the API; put it behind TLS and a firewall, or use "
            "--host 127.0.0.1",
            err=True,
        )
    problem = asyncio.run(blob_store_problem(settings.blob_store_url))
    if problem is not None:
        raise click.ClickException(f"not starting: {problem}")
    first_key = with_storage(database_url, create_first_key)
    if first_key is not None:
        click.echo(
            f"Created an API key for entity 'default' (shown once, store it now):\n{first_key}"
        )
    exec_server()


async def blob_store_problem(url: str) -> str | None:
    """Why the blob store cannot take files (a probe write failed), or None."""
    try:
        blobs = open_blob_store(url)
    except BlobError as exc:
        return str(exc)
    try:
        await blobs.open()
        await blobs.check()
    except BlobError as exc:
        return f"the blob store {redacted(url)} is not writable: {exc}"
    finally:
        await blobs.close()
    return None


async def create_first_key(storage: Storage) -> str | None:
    if await storage.count_keys() > 0:
        return None
    key = generate_key()
    await storage.create_key("default", "default", hash_key(key))
    return key


# Database -------------------------------------------------------------------------------------


@click.group(cls=Group, epilog="Example: ckpt db upgrade --database-url sqlite:///./ckpt.db")
def db() -> None:
    """Create, upgrade and clean the database."""


@db.command("upgrade", epilog="Example: ckpt db upgrade --database-url sqlite:///./ckpt.db")
@database_url_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(database_url: str, revision: str) -> None:
    """Apply the migrations up to REVISION (creates the schema on an empty database)."""
    upgrade(database_url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade", epilog="Example: ckpt db downgrade base")
@database_url_option
@click.argument("revision")
def db_downgrade(database_url: str, revision: str) -> None:
    """Revert the migrations down to REVISION (`base` removes every table)."""
    downgrade(database_url, revision)
    click.echo(f"database at {revision}")


@db.command("gc", epilog="Example: ckpt db gc --older-than 86400")
@database_url_option
@blob_url_option
@click.option(
    "--older-than",
    type=float,
    default=24 * 3600,
    show_default=True,
    help="Purge tombstones of checkpoints deleted more than this many seconds ago.",
)
@click.option(
    "--blob-grace",
    type=float,
    default=3600,
    show_default=True,
    help="Remove unreferenced blobs untouched for more than this many seconds.",
)
@click.option(
    "--upload-ttl",
    type=float,
    default=7 * 24 * 3600,
    show_default=True,
    help="Forget resumable uploads started more than this many seconds ago.",
)
@click.option(
    "--put-idle",
    type=float,
    default=3600,
    show_default=True,
    help="S3 store: remove what a plain PUT staged once nothing was written to it for this many "
    "seconds (the local store knows at once whether a request still writes it).",
)
def db_gc(
    database_url: str,
    blob_url: str | None,
    older_than: float,
    blob_grace: float,
    upload_ttl: float,
    put_idle: float,
) -> None:
    """Finish model deletes cut short, purge old tombstones (their cursors then expire), forget
    expired uploads, remove what dropped uploads staged, and remove blobs no file references."""
    store_url = blob_url or default_blob_url(database_url)

    async def run(storage: Storage) -> Collected:
        blobs = open_blob_store(store_url) if store_url else None
        if blobs is not None:
            await blobs.open()
        try:
            return await collect(
                storage,
                blobs,
                tombstone_ttl=older_than,
                blob_grace=blob_grace,
                upload_ttl=upload_ttl,
                put_idle=put_idle,
            )
        finally:
            if blobs is not None:
                await blobs.close()

    done = with_storage(database_url, run)
    if done.finished_models:
        click.echo(f"finished deleting {done.finished_models} deleted models")
    click.echo(f"purged {done.tombstones} tombstones")
    if store_url:
        if done.dropped_uploads:
            click.echo(f"removed the staged bytes of {done.dropped_uploads} dropped uploads")
        click.echo(f"removed {done.blobs} unreferenced blobs ({done.freed_bytes} bytes)")
    else:
        click.echo("blobs not collected: name the blob store with --blob-url (CKPT_BLOB_URL)")


@db.command(
    "backup",
    epilog="Example: ckpt db backup /backups/ckpt-$(date +%F) --database-url sqlite:///./ckpt.db",
)
@database_url_option
@blob_url_option
@click.argument("dest", type=click.Path(path_type=Path))
def db_backup(database_url: str, blob_url: str | None, dest: Path) -> None:
    """Snapshot a SQLite database while it serves, with every blob its files name, into DEST (a new
    folder). For PostgreSQL it says how to use pg_dump instead."""
    store_url = blob_url or default_blob_url(database_url)
    try:
        done = asyncio.run(backup(database_url, store_url, dest))
    except (BackupRefused, BlobError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"backed up schema {done.revision}: {done.models} models, {done.checkpoints} checkpoints, "
        f"{done.files} files ({done.blobs} blobs, {done.blob_bytes} bytes) into {dest}"
    )


@db.command(
    "restore",
    epilog="Example: ckpt db restore /backups/ckpt-2026-12-04 --database-url sqlite:///./ckpt.db",
)
@database_url_option
@blob_url_option
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
def db_restore(database_url: str, blob_url: str | None, src: Path) -> None:
    """Bring back a `ckpt db backup` folder as a new SQLite database (never over an existing one)
    and its blobs into the blob store; `ckpt serve` then upgrades its schema if it is older."""
    store_url = blob_url or default_blob_url(database_url)
    try:
        done = asyncio.run(restore(src, database_url, store_url))
    except (BackupRefused, BlobError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"restored schema {done.revision}: {done.models} models, {done.checkpoints} checkpoints, "
        f"{done.files} files ({done.blobs} blobs copied) into {redacted(database_url)}"
    )


@db.command(
    "copy",
    epilog="Example: ckpt db copy --from sqlite:///./ckpt.db --to postgresql://ckpt@db/ckpt "
    "--blob-from ./ckpt.db-blobs --blob-to s3://bucket/ckpt",
)
@click.option("--from", "from_url", required=True, help="The SQLite database: sqlite:///PATH.")
@click.option("--to", "to_url", required=True, help="An empty PostgreSQL database.")
@click.option("--blob-from", help="The blob store the files are in now (default: beside the file).")
@click.option("--blob-to", help="The blob store the new servers will use: a folder or s3://...")
def db_copy(from_url: str, to_url: str, blob_from: str | None, blob_to: str | None) -> None:
    """Copy every key, model, checkpoint, metric, tombstone and file record from SQLite into an
    empty PostgreSQL database (ids unchanged: clients keep their ids and cursors), and the blobs
    between stores, verifying each digest. Run it again to finish a copy cut short."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    blob_from = blob_from or (default_blob_url(from_url) if blob_to else None)
    if blob_to and blob_from == blob_to:
        raise click.ClickException("--blob-from and --blob-to name the same store")
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        tasks: dict[str, Any] = {}

        def on_rows(table: str, rows: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = progress.add_task(table, total=total)
            progress.advance(tasks[table], rows)

        try:
            done = asyncio.run(copy_database(from_url, to_url, on_rows))
        except CopyRefused as exc:
            raise click.ClickException(str(exc)) from None
        if done.sha256s and blob_to:
            assert blob_from is not None
            blob_task = progress.add_task("blobs", total=len(done.sha256s))
            try:
                copied, copied_bytes = asyncio.run(
                    copy_store(
                        blob_from, blob_to, done.sha256s, lambda *_: progress.advance(blob_task)
                    )
                )
            except BlobError as exc:
                raise click.ClickException(f"copying blobs: {exc}") from None
    if done.sha256s and not blob_to:
        click.echo(
            f"{len(done.sha256s)} blobs not copied: the new servers must use the same store, "
            "or run again with --blob-to",
            err=True,
        )
    asyncio.run(finish_copy(to_url))
    rows = ", ".join(f"{n} {table}" for table, n in done.rows.items())
    click.echo(f"copied {rows}; {done.models_compared} models compared on both sides: identical")
    if done.sha256s and blob_to:
        click.echo(f"blobs: {copied} copied ({copied_bytes} bytes), every digest verified")


# Keys -----------------------------------------------------------------------------------------


@click.group(cls=Group, epilog="Example: ckpt keys create --entity my-team --name laptop")
def keys() -> None:
    """Create, list and revoke API keys (stored only as sha256 hashes)."""


@keys.command(
    "create",
    epilog="Example: ckpt keys create --entity my-team --name inference --read-only",
)
@database_url_option
@click.option("--entity", required=True, help="The entity (team or user) the key acts for.")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option(
    "--read-only",
    is_flag=True,
    help="The key lists, reads and downloads, and gets 403 on every write (for an inference "
    "server or a CI job that only pulls checkpoints).",
)
def keys_create(database_url: str, entity: str, name: str, read_only: bool) -> None:
    """Create a key; it is printed once, alone on the last line."""
    key = generate_key()
    created = with_storage(
        database_url,
        lambda storage: storage.create_key(entity, name, hash_key(key), read_only=read_only),
    )
    scope = "read-only key" if read_only else "key"
    click.echo(
        f"Created {scope} {created.id} for entity {entity!r}; store it now, it is not shown again:",
        err=True,
    )
    click.echo(key)


@keys.command("list", epilog="Example: ckpt keys list")
@database_url_option
def keys_list(database_url: str) -> None:
    """List keys (never the keys themselves): id, entity, name, scope, created, state."""
    for key in with_storage(database_url, lambda storage: storage.list_keys()):
        state = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "active"
        scope = "read-only" if key.read_only else "read-write"
        click.echo(
            f"{key.id}  {key.entity}  {key.name or '-'}  {scope}  "
            f"{key.created_at.isoformat()}  {state}"
        )


@keys.command("revoke", epilog="Example: ckpt keys revoke 6f1c...")
@database_url_option
@click.argument("key_id")
def keys_revoke(database_url: str, key_id: str) -> None:
    """Revoke a key by its id (from `ckpt keys list`); requests with it get 401 at once."""
    key = with_storage(database_url, lambda storage: storage.revoke_key(key_id))
    click.echo(f"revoked {key.id} ({key.entity})")
