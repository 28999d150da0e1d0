"""A per-key rate limit (off by default): a token bucket for each API key, kept in the process, in
front of the fast paths, answering 429 with `Retry-After` when a key's bucket is empty."""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..keys import hash_key
from .asgi import header
from .refusals import Refusal

# Buckets kept at most: a client sending a new made-up key each time must not grow the process
# without bound. The least recently used bucket goes first; it is full again after `burst / rate`
# seconds of rest anyway, so dropping it loses nothing unless this many keys are busy at once.
MAX_BUCKETS = 100_000

# Every request that presents a bearer key is counted, whatever its route (health included).
REFUSALS: Final = (
    Refusal(
        429,
        "the key presented went over the per-key rate limit (`--rate-limit`, off by default)",
        headers=("Retry-After",),
    ),
)

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_SECONDS |= {"h": 3600, "hour": 3600}


@dataclass(frozen=True)
class Rate:
    """`requests` per `seconds`: `10/s`, `600/min`, `5000/h`; a bare number is per second."""

    requests: float
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE.match(text)
        if match is None or float(match[1]) <= 0:
            raise ValueError(f"{text!r}: use a number of requests per s, min or h, such as 10/s")
        return cls(float(match[1]), _SECONDS[match[2] or "s"])

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}[self.seconds]
        return f"{self.requests:g}/{unit}"


class KeyBuckets:
    """One token bucket per key hash: `burst` tokens, refilled at the rate; a request takes one."""

    def __init__(
        self, rate: Rate, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.per_second = rate.per_second
        self.burst = float(burst)
        self.clock = clock
        # key hash -> [tokens, when they were counted]
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()

    def take(self, key_hash: str) -> float:
        """0 when the key may go on (a token taken), else the seconds until it may."""
        now = self.clock()
        bucket = self.buckets.get(key_hash)
        if bucket is None:
            bucket = self.buckets[key_hash] = [self.burst, now]
            if len(self.buckets) > MAX_BUCKETS:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key_hash)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
            bucket[1] = now
        if bucket[0] >= 1:
            bucket[0] -= 1
            return 0.0
        return (1 - bucket[0]) / self.per_second


def presented_key(scope: Scope) -> str | None:
    """The bearer key of a request, read as `auth.entity_for_authorization` reads it."""
    authorization = header(scope, b"authorization")
    if authorization is None:
        return None
    scheme, _, key = authorization.decode("latin-1").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class RateLimit:
    """In front of everything that reads a key (the fast paths included, so none bypasses it).

    Requests are counted per key presented, before the key is checked: a wrong key is limited as a
    right one is, and a request without a key (health, system-check) is never limited. The buckets
    are this process's: with `--workers N` or several servers, a key may make N times the rate.
    """

    def __init__(self, app: ASGIApp, buckets: KeyBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            key = presented_key(scope)
            if key is not None:
                wait = self.buckets.take(hash_key(key))
                if wait:
                    await self.refuse(scope, send, wait)
                    return
        await self.app(scope, receive, send)

    async def refuse(self, scope: Scope, send: Send, wait: float) -> None:
        retry_after = str(max(1, math.ceil(wait))).encode()
        body = orjson.dumps(
            {
                "detail": f"Rate limit exceeded: this key may make {self.buckets.rate} requests; "
                f"retry after {retry_after.decode()} s"
            }
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", retry_after),
        ]
        length = header(scope, b"content-length")
        if (length is not None and length != b"0") or header(scope, b"transfer-encoding"):
            # Its body is not read: close rather than take in (say) a whole file to discard it.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
