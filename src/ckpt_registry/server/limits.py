"""Request body limits, declared per route: a body over its route's limit gets 413 before the route
(or storage) sees any of it; a route may declare a larger limit, or a streamed body never buffered."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

import orjson
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi import header, replaying, send_json
from .refusals import Refusal

# Methods whose body no route reads: never buffered, so GETs (the list endpoint) pay nothing here.
BODILESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class BodyLimit:
    """What a route reads: a body of at most `max_bytes`, read whole first; or None, streamed."""

    max_bytes: int | None


STREAMED: Final = BodyLimit(None)

Endpoint = TypeVar("Endpoint", bound=Callable[..., object])
_DECLARED = "_ckpt_body_limit"


def request_body(limit: BodyLimit) -> Callable[[Endpoint], Endpoint]:
    """Declare a route's body when it is not a JSON body within `Settings.max_body_bytes`:

    @router.put("/files/{path:path}")
    @request_body(STREAMED)
    async def upload_file(request: Request) -> Response: ...
    """

    def declare(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _DECLARED, limit)
        return endpoint

    return declare


def declared_limit(endpoint: Callable[..., object]) -> BodyLimit | None:
    limit = getattr(endpoint, _DECLARED, None)
    return limit if isinstance(limit, BodyLimit) else None


def buffers_body(route: APIRoute, method: str) -> bool:
    """True when `BodySizeLimit` reads the body of a request to this route whole, within a limit."""
    return method not in BODILESS_METHODS and declared_limit(route.endpoint) is not STREAMED


# A streamed route sets its own size limit, and documents its own 413 (`PUT .../files`).
REFUSALS: Final = (
    Refusal(413, "the request body is over the limit (`CKPT_MAX_BODY_BYTES`, 1 MiB)", buffers_body),
)


class BodyLimits:
    """Each route's body limit: its declaration, else the JSON limit (`default`).

    A request no route declares anything for (a JSON route, an unknown path) gets the JSON limit, so a
    route that forgets to declare a streamed body is refused large bodies, never handed them unbounded.
    """

    def __init__(self, routes: Iterable[BaseRoute], default: BodyLimit) -> None:
        self.default = default
        self.declared = [
            (route, limit)
            for route in routes
            if isinstance(route, APIRoute) and (limit := declared_limit(route.endpoint)) is not None
        ]

    def for_request(self, scope: Scope) -> BodyLimit:
        # Only routes that declared something are tried, with the router's own matching (one regex
        # each); there are none yet, so this costs nothing until a streamed route exists.
        for route, limit in self.declared:
            if route.matches(scope)[0] is Match.FULL:
                return limit
        return self.default

    def for_route(self, method: str, path: str) -> BodyLimit:
        """The limit of the route declared as `method path`, e.g. `("POST", CHECKPOINTS_PATH)`."""
        for route, limit in self.declared:
            if route.path == path and method in (route.methods or ()):
                return limit
        return self.default


class BodySizeLimit:
    """ASGI layer: reads each non-GET body whole within its route's limit before the app acts on it."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS_METHODS:
            await self.app(scope, receive, send)
            return
        # `buffers_body` says the same per route, for the OpenAPI document.
        max_bytes = self.limits.for_request(scope).max_bytes
        if max_bytes is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(scope, receive, send, max_bytes)
        if body is not None:
            await self.app(scope, replaying(body, receive), send)


async def read_body(scope: Scope, receive: Receive, send: Send, max_bytes: int) -> bytes | None:
    """The whole request body; None when it is over `max_bytes` (answered 413) or the client left.

    Reading it whole first means a chunked body over the limit is refused before anything acts on it.
    """
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        await too_large(send, max_bytes)
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            await too_large(send, max_bytes)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def too_large(send: Send, max_bytes: int) -> None:
    detail = f"Request body too large: the limit is {max_bytes} bytes"
    # The rest of the body is never read, so the connection cannot carry another request.
    await send_json(send, 413, orjson.dumps({"detail": detail}), close=True)
