"""Connections that cannot hold the server: a deadline for a request's headers, a minimum rate for its
body, and a cap on connections per process, enforced in uvicorn's HTTP protocol (`ckpt serve`)."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import weakref
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .refusals import Refusal

log = logging.getLogger("ckpt_registry")

# How often the watch looks at every connection (Kestrel's heartbeat is one second too): a timer per
# connection would cost more than one pass over a few thousand of them.
TICK_SECONDS = 1.0
# A connection over the cap waits at most this long for its headers before it is closed: it is only
# held to answer its request with a 503 a client can read.
REFUSED_HEADER_SECONDS = 2.0
# Descriptors the process keeps for everything but client connections (database, blobs, logs).
RESERVED_DESCRIPTORS = 256

HEADER_TIMEOUT_DETAIL = "Request headers did not arrive in time; the connection is closed"
BODY_RATE_DETAIL = "Request body arrived too slowly; the connection is closed"
OVER_CAPACITY_DETAIL = "The server has too many connections; retry shortly"

# Answered by `ckpt serve`'s HTTP protocol, before the app (or any route) sees the request.
REFUSALS = (
    Refusal(
        408,
        "the request's headers took longer than `--header-timeout`, or its body arrived slower "
        "than `--min-body-rate` (`ckpt serve`); the connection is closed",
    ),
    Refusal(
        503,
        "the server process holds `--max-connections` connections already (`ckpt serve`)",
        headers=("Retry-After",),
    ),
)


@dataclass(frozen=True)
class ConnectionLimits:
    """The settings, picklable: uvicorn hands them to each worker process with its protocol."""

    header_timeout: float
    min_body_rate: float  # bytes per second; 0: no minimum
    body_rate_grace: float
    max_connections: int


def raw_response(
    server_state: ServerState, status: int, detail: str, extra: tuple[bytes, ...] = ()
) -> bytes:
    """A whole JSON error response (the contract's `{"detail": ...}`) that closes the connection."""
    body = orjson.dumps({"detail": detail})
    lines = [STATUS_LINE[status]]
    for name, value in server_state.default_headers:
        lines.extend([name, b": ", value, b"\r\n"])
    lines.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            *extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )
    return b"".join(lines)


class Watch:
    """One per server (process): its open connections, checked every tick, and those it admitted."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.connections: set[GuardedHttpToolsProtocol] = set()
        self.admitted: set[GuardedHttpToolsProtocol] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.last_tick = time.monotonic()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.timer is None:
            self.last_tick = time.monotonic()
            self.timer = loop.call_later(TICK_SECONDS, self.tick, loop)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        elapsed, self.last_tick = now - self.last_tick, now
        for connection in list(self.connections):
            connection.check(now, elapsed)
        self.timer = None
        if self.connections:
            self.start(loop)


_watches: weakref.WeakKeyDictionary[ServerState, Watch] = weakref.WeakKeyDictionary()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the limits of `ConnectionLimits`.

    - Headers: a request's headers must all arrive within `header_timeout` of the connection's start
      (or of the request's first byte on a kept-alive connection); otherwise 408 (when any of the
      request has arrived) and the connection is closed.
    - Body: once `body_rate_grace` seconds of reading have passed, the body must have arrived at
      `min_body_rate` bytes a second on average; otherwise 408 (when the response has not started)
      and the connection is closed. Only time the server spends waiting on the client counts:
      while the app does not read (uvicorn stops reading once 64 KiB wait) or a client waits for
      `100 Continue`, the clock stops, so a slow disk or database is never blamed on the client.
    - Connections over `max_connections` get 503 with `Retry-After: 1` once their headers arrive
      (within 2 s), and are closed; they never reach the app.
    """

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        watch = _watches.get(self.server_state)
        if watch is None:
            watch = _watches[self.server_state] = Watch(limits)
        self.watch = watch
        self.limits = limits
        self.refused = False
        self.headers_deadline: float | None = None
        self.request_begun = False
        self.body_bytes = 0
        self.body_seconds: float | None = None  # None: no body being read
        self.body_counted_until = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.limits.header_timeout
        if len(self.watch.admitted) >= self.limits.max_connections:
            self.refused = True
            limit = min(limit, REFUSED_HEADER_SECONDS)
        else:
            self.watch.admitted.add(self)
        self.headers_deadline = time.monotonic() + limit
        self.watch.connections.add(self)
        self.watch.start(self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.watch.connections.discard(self)
        self.watch.admitted.discard(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.request_begun = True
        if self.headers_deadline is None:  # a later request on a kept-alive connection
            self.headers_deadline = time.monotonic() + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        self.headers_deadline = None
        self.body_bytes = 0
        self.body_seconds = 0.0
        self.body_counted_until = time.monotonic()
        if self.refused:
            # Counted as a connection until it closes, but never given to the app.
            self.transport.write(
                raw_response(self.server_state, 503, OVER_CAPACITY_DETAIL, (b"retry-after: 1\r\n",))
            )
            self.transport.close()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.refused:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.body_seconds = None
        self.request_begun = False
        if self.refused:
            return
        super().on_message_complete()

    def check(self, now: float, elapsed: float) -> None:
        """One tick of the watch: close the connection if it broke a limit."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.headers_deadline is not None:
            if self.flow.read_paused:  # a pipelined request waits for the one before it
                self.headers_deadline += elapsed
            elif now >= self.headers_deadline:
                self.close_slow(HEADER_TIMEOUT_DETAIL, answer=self.request_begun)
            return
        if self.body_seconds is None or self.limits.min_body_rate <= 0:
            return
        cycle = self.cycle
        counted, self.body_counted_until = self.body_counted_until, now
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            return
        self.body_seconds += now - counted
        if (
            self.body_seconds > self.limits.body_rate_grace
            and self.body_bytes < self.limits.min_body_rate * self.body_seconds
        ):
            self.close_slow(BODY_RATE_DETAIL, answer=cycle is None or not cycle.response_started)

    def close_slow(self, detail: str, *, answer: bool) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app sees the client gone (its `receive` answers `http.disconnect`) and anything
            # it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            self.transport.write(raw_response(self.server_state, 408, detail))
        self.headers_deadline = self.body_seconds = None
        self.transport.close()


def raise_descriptor_limit(max_connections: int) -> None:
    """Let the process open a descriptor for every connection it may hold (the soft limit is often
    1,024), up to the hard limit; warn when even that is too low for the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < wanted:
            log.warning(
                "the descriptor limit (%d) is below --max-connections (%d) plus %d for the server "
                "itself: raise `ulimit -n` or lower --max-connections",
                raised,
                max_connections,
                RESERVED_DESCRIPTORS,
            )
