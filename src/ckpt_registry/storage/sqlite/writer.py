"""SQLite's one writer: a thread that owns the write connection and commits queued writes in groups.

A write never runs on the event loop, so a lock held by another process (`busy_timeout`), a full disk or
a long transaction never stalls reads, health checks or other requests of this process (datasette
sends its writes to one writer thread for the same reason). Writes queued while a transaction commits
go into the next one together, each inside its own SAVEPOINT so one request's error undoes only its
own changes; a request is answered only after the COMMIT that made its write durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from ..errors import DatabaseUnavailable
from ..outages import Episode

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

logger = logging.getLogger("ckpt_registry.storage.sqlite")

# How long a write waits for another process's write lock before it answers 503.
BUSY_TIMEOUT_MS = 5000
# How often a waiting writer asks for the lock again. SQLite's own busy handler backs off to 100 ms
# between tries, and another process committing batch after batch (a long retention) took the lock
# back within a millisecond each time: the waiting process starved and answered 503 after 5 s.
LOCK_POLL_SECONDS = 0.001
# Writes committed together at most. Grouping is what lets 16 registering clients share one fsync-free
# commit and one copy of each touched page in the WAL instead of one per request.
MAX_GROUP = 64
# Past this size the writer resets the WAL (a TRUNCATE checkpoint between its own commits): under
# sustained writes, passive checkpoints never find the WAL fully copied back at the moment a write
# starts, so it never restarted and grew to 2.6 GB in 40 s of 16 registering clients.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
# The TRUNCATE checkpoint waits this long for readers to leave the WAL, then tries after a later commit.
CHECKPOINT_BUSY_MS = 200
DISK_FULL = "database unavailable: the disk is full"


def unavailable(exc: sqlite3.Error) -> DatabaseUnavailable | None:
    """The 503 for a failure the operator or time can fix; None for anything else (a bug: 500)."""
    primary = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseUnavailable(
            "database unavailable: it is locked by another process; try again", retry_after=1
        )
    if primary == sqlite3.SQLITE_FULL:
        return DatabaseUnavailable(DISK_FULL, retry_after=30)
    if primary in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        return DatabaseUnavailable(f"database unavailable: {exc}", retry_after=10)
    return None


@dataclass(slots=True)
class _Pending:
    job: Job[Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _deliver(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the request was cancelled (the client went away): nobody is waiting
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Writer:
    """Runs write jobs (functions of the write connection) one transaction group at a time."""

    def __init__(self, path: Path, episode: Episode, *, wal_limit_bytes: int = WAL_LIMIT_BYTES):
        self.path = path
        self.wal_path = Path(f"{path}-wal")
        self.episode = episode
        self.wal_limit_bytes = wal_limit_bytes
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._inline_db: sqlite3.Connection | None = None

    def start(self, db: sqlite3.Connection, inline_db: sqlite3.Connection) -> None:
        self._db = db
        # Short writes first try this connection on the event loop (`run(..., inline=True)`); it
        # never waits for the lock, so a lock held elsewhere sends them to the thread.
        self._inline_db = inline_db
        inline_db.execute("PRAGMA busy_timeout = 0")
        # No busy handler: `_begin` polls for the write lock itself (LOCK_POLL_SECONDS).
        db.execute("PRAGMA busy_timeout = 0")
        # Checkpoints are ours to run (below, and the passive checkpointer thread), never a COMMIT's.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")
        self._thread = threading.Thread(target=self._serve, name="sqlite-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        for db in (self._db, self._inline_db):
            if db is not None:
                db.close()
        self._db = self._inline_db = None

    async def run(self, job: Job[T], *, inline: bool = False) -> T:
        """Run `job` in a write transaction; its result once committed.

        `inline` (for a job that touches a few rows, never a batch): when no write is queued and the
        write lock is free this instant, run it on the event loop. That costs what the write costs
        (~0.1-0.3 ms) and no thread hand-off: measured, the hand-off alone took registrations from
        1,500 to 1,300 per second. Anything else goes to the writer thread, which does the waiting.
        """
        if self._thread is None:
            raise DatabaseUnavailable("database is not open")
        if inline and self._queue.empty():
            done, result = self._run_inline(job)
            if done:
                return cast(T, result)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Pending(job, future, loop))
        return await future

    def _run_inline(self, job: Job[T]) -> tuple[bool, T | None]:
        """(True, result) when the job ran and committed here; (False, None) when the lock was taken."""
        db = self._inline_db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_BUSY:
                return False, None
            raise self._mapped(exc) from exc
        try:
            result = job(db)
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            error = self._mapped(exc)
            if error is exc:
                raise
            raise error from exc
        self.episode.succeeded()
        if self._wal_size() > self.wal_limit_bytes:
            # The writer thread resets the WAL after an (empty) transaction of its own.
            loop = asyncio.get_running_loop()
            self._queue.put(_Pending(_nothing, loop.create_future(), loop))
        return True, result

    def _wal_size(self) -> int:
        try:
            return self.wal_path.stat().st_size
        except FileNotFoundError:
            return 0

    # The writer thread ---------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending is None:
                    stop = True
                    break
                group.append(pending)
            self._commit(group)
            self._bound_wal()
            if stop:
                return

    def _commit(self, group: list[_Pending]) -> None:
        db = self._db
        assert db is not None
        outcomes: list[tuple[bool, Any]] = []
        # A job alone in its transaction needs no savepoint: a failure rolls the transaction back.
        savepoints = len(group) > 1
        try:
            _begin(db)
            for pending in group:
                if savepoints:
                    db.execute("SAVEPOINT job")
                try:
                    result = pending.job(db)
                except Exception as exc:
                    if not db.in_transaction:
                        raise  # SQLite rolled back the whole group (a full disk, an I/O error)
                    db.execute("ROLLBACK TO job" if savepoints else "ROLLBACK")
                    if savepoints:
                        db.execute("RELEASE job")
                    outcomes.append((False, self._mapped(exc)))
                else:
                    if savepoints:
                        db.execute("RELEASE job")
                    outcomes.append((True, result))
            if db.in_transaction:
                db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            error = self._mapped(exc)
            for pending in group:
                self._answer(pending, False, error)
            return
        if outcomes and any(ok for ok, _ in outcomes):
            self.episode.succeeded()
        for pending, (ok, value) in zip(group, outcomes, strict=True):
            self._answer(pending, ok, value)

    def _mapped(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.Error):
            error = unavailable(exc)
            if error is not None:
                self.episode.failed(error.message)
                return error
        return exc

    @staticmethod
    def _answer(pending: _Pending, ok: bool, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is shutting down
            pending.loop.call_soon_threadsafe(_deliver, pending.future, ok, value)

    def _bound_wal(self) -> None:
        size = self._wal_size()
        if size <= self.wal_limit_bytes:
            return
        db = self._db
        assert db is not None
        # Between our own commits no write of this process can start; other processes' writers
        # and this process's readers wait at most CHECKPOINT_BUSY_MS for it.
        db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS}")
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            logger.debug("WAL checkpoint failed: %s", exc)
        else:
            if busy:
                logger.debug("WAL of %d bytes not reset yet: readers still use it", size)
        finally:
            db.execute("PRAGMA busy_timeout = 0")


def _nothing(_db: sqlite3.Connection) -> None:
    pass


def _begin(db: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, asking for the write lock every millisecond for up to BUSY_TIMEOUT_MS."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(LOCK_POLL_SECONDS)


def checkpoint_passively(path: Path, stop: threading.Event, interval: float = 0.25) -> None:
    """Copy the WAL back into the database on a thread of its own, so neither the writer nor the event
    loop waits for that I/O; SQLite releases the GIL while it does it."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    wal = Path(f"{path}-wal")
    try:
        db.execute("PRAGMA busy_timeout = 1000")
        while not stop.wait(interval):
            with contextlib.suppress(sqlite3.Error, OSError):
                if wal.stat().st_size > 0:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        db.close()
