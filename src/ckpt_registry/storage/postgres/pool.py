"""The asyncpg pool, and what a failure of the database means for a request.

Connection failures and timeouts raise `DatabaseUnavailable` (the server answers 503); the pool
replaces dead connections by itself when the database returns. A transaction that lost a deadlock or
a serialization race was rolled back whole, so it is run again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from ..base import PoolUsage
from ..compat import application_name
from ..errors import DatabaseUnavailable
from ..outages import Episode

logger = logging.getLogger("ckpt_registry.storage.postgres")

T = TypeVar("T")
Connection = Any  # asyncpg ships no type information

# The connection is gone (terminated, reset, refused, server shutting down): another one may work.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InsufficientResourcesError,
)
# The database did not answer in time: retrying would only double the wait.
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncpg.exceptions.QueryCanceledError,
)
# The transaction lost a race and was rolled back whole: running it again is safe and will succeed.
RACE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
RACE_ATTEMPTS = 5


class _ConnectionLost(Exception):
    """The pooled connection turned out to be dead."""


_RETRYABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, _ConnectionLost)


def reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text or type(exc).__name__


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"database unavailable: {reason(exc)}")


async def _rollback_if_needed(connection: Connection) -> None:
    """Pool reset: nothing here changes session state, so skip asyncpg's reset round trip."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class Pool:
    """An asyncpg pool that runs units of work and turns outages into `DatabaseUnavailable`."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int,
        pool_max: int,
        connect_timeout: float,
        statement_timeout: float,
    ) -> None:
        self.dsn = dsn
        self.pool_max = max(pool_max, 1)
        self.pool_min = min(max(pool_min, 0), self.pool_max)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.episode = Episode(logger, "PostgreSQL")
        self._pool: Any = None
        self._running = 0  # units of work inside `run`, holding a connection or waiting for one

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    def connect_kwargs(self) -> dict[str, Any]:
        return {
            "timeout": self.connect_timeout,
            # Client-side bound as well, in case the server stops answering altogether.
            "command_timeout": self.statement_timeout + 1.0,
            "server_settings": {
                # Version and schema: `ckpt serve` elsewhere reads them (`compat.py`).
                "application_name": application_name(),
                "plan_cache_mode": "force_generic_plan",
                "statement_timeout": str(int(self.statement_timeout * 1000)),
                "idle_in_transaction_session_timeout": str(int(self.statement_timeout * 1000)),
            },
        }

    async def connect(self) -> Connection:
        """A connection of its own, outside the pool (the key listener's)."""
        return await asyncpg.connect(self.dsn, **self.connect_kwargs())

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                reset=_rollback_if_needed,
                **self.connect_kwargs(),
            )
        except (*CONNECTION_ERRORS, *TIMEOUT_ERRORS) as exc:
            raise unavailable(exc) from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=self.connect_timeout)
            except (*CONNECTION_ERRORS, *TIMEOUT_ERRORS):
                pool.terminate()

    def usage(self) -> PoolUsage | None:
        """Connections lent out, and units of work beyond them (waiting for one); None when closed."""
        pool = self._pool
        if pool is None:
            return None
        in_use = pool.get_size() - pool.get_idle_size()
        return PoolUsage(in_use=in_use, waiting=max(self._running - in_use, 0))

    async def run(self, work: Callable[[Connection], Awaitable[T]], *, idempotent: bool) -> T:
        """Run `work` on a pooled connection.

        A transaction that lost a deadlock or serialization race is run again (up to RACE_ATTEMPTS
        times, after a short random pause so the racers do not meet again); if it keeps losing, 503.
        """
        self._running += 1
        try:
            return await self._run_retrying(work, idempotent=idempotent)
        finally:
            self._running -= 1

    async def _run_retrying(
        self, work: Callable[[Connection], Awaitable[T]], *, idempotent: bool
    ) -> T:
        for attempt in range(RACE_ATTEMPTS):
            try:
                result = await self._run_once(work, idempotent=idempotent)
            except RACE_ERRORS as exc:
                if attempt + 1 == RACE_ATTEMPTS:
                    raise DatabaseUnavailable(
                        f"database busy: {reason(exc)}; try again", retry_after=1
                    ) from exc
                logger.debug("running a transaction again after: %s", reason(exc))
                await asyncio.sleep(random.uniform(0.001, 0.005) * 2**attempt)
            except DatabaseUnavailable as exc:
                self.episode.failed(exc.message)
                raise
            else:
                self.episode.succeeded()
                return result
        raise AssertionError("unreachable")

    async def _run_once(self, work: Callable[[Connection], Awaitable[T]], *, idempotent: bool) -> T:
        """After `pg_terminate_backend` or a server restart every pooled connection is dead: the
        first failure expires them all, and idempotent work is retried once on a fresh connection."""
        pool = self._pool
        if pool is None:
            raise DatabaseUnavailable("database unavailable: the storage is not open")
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            try:
                async with pool.acquire() as connection:
                    try:
                        return await work(connection)
                    except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
                        if isinstance(exc, asyncpg.InterfaceError) and not connection.is_closed():
                            raise  # a misuse of asyncpg: ours to fix, not an outage
                        # A backend killed while idle leaves its FATAL message unread on the
                        # socket; the next query trips asyncpg's protocol state instead.
                        connection.terminate()
                        raise _ConnectionLost(reason(exc)) from exc
            except TIMEOUT_ERRORS as exc:
                raise unavailable(exc) from exc
            except _RETRYABLE as exc:
                await pool.expire_connections()
                if attempt + 1 == attempts:
                    raise unavailable(exc) from exc
                logger.info("retrying on a fresh connection after: %s", reason(exc))
        raise AssertionError("unreachable")
