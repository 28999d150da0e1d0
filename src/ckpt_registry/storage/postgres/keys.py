"""The key cache of one server process, kept exact across processes by PostgreSQL LISTEN/NOTIFY.

`ckpt keys revoke` in any process notifies every server process, which drops its cache; the cache is
used only while the listening connection is up, so a missed notification cannot keep a revoked key
alive (and KEY_CACHE_TTL bounds staleness should one ever be lost anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..base import Caller
from .pool import Connection, Pool, reason

logger = logging.getLogger("ckpt_registry.storage.postgres")

KEYS_CHANNEL = "ckpt_keys"
KEY_CACHE_TTL = 10.0  # seconds
LISTENER_HEARTBEAT = 5.0


class KeyCache:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        # key hash -> (entity and scope, monotonic expiry); used only while the listener is connected.
        self._entries: dict[str, tuple[Caller, float]] = {}
        self._generation = 0
        self._listening = False
        self._listener: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def caller(
        self, key_hash: str, lookup: Callable[[], Awaitable[Caller | None]]
    ) -> Caller | None:
        """The cached entity and scope of a live key, or `lookup()`'s answer (cached when it is a
        live key). A key's scope never changes once made, so the cache carries it as it is."""
        loop = asyncio.get_running_loop()
        if self._listener is None and self.pool.is_open:
            # Started by the first key lookup, so CLI commands and scripts open no extra connection.
            self._listener = loop.create_task(self._listen())
        cached = self._entries.get(key_hash)
        if cached is not None and self._listening and cached[1] > loop.time():
            return cached[0]
        generation = self._generation
        caller = await lookup()
        # Only live keys are cached (a new key works at once); a revocation that arrived while we
        # read bumped the generation, so a stale answer is not stored.
        if caller is not None and self._listening and generation == self._generation:
            self._entries[key_hash] = (caller, loop.time() + KEY_CACHE_TTL)
        return caller

    def clear(self, *_args: object) -> None:
        self._generation += 1
        self._entries.clear()

    async def _listen(self) -> None:
        """Keep a connection LISTENing on KEYS_CHANNEL; the cache is used only while it is."""
        delay = 0.2
        while True:
            connection: Connection = None
            try:
                connection = await self.pool.connect()
                connection.add_termination_listener(self._lost)
                await connection.add_listener(KEYS_CHANNEL, self.clear)
                # Anything revoked before LISTEN took effect may be cached: start empty.
                self.clear()
                self._listening = True
                delay = 0.2
                while not connection.is_closed():
                    await asyncio.sleep(LISTENER_HEARTBEAT)
                    await connection.fetchval("SELECT 1", timeout=self.pool.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: drop the cache, reconnect with backoff
                logger.debug("key listener lost: %s", reason(exc))
            finally:
                self._listening = False
                self.clear()
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _lost(self, _connection: Connection) -> None:
        self._listening = False
        self.clear()
