"""Limits on a request's head, answered before anything else reads it: too many or too large headers
(431), a URL too long (414), too many query parameters (400), each in the contract's error shape.

uvicorn bounds what it parses (h11: a 16 KiB head; httptools: no bound of its own), so these are the
API's own bounds, the same whichever parser runs: far above what any client of this API sends (a few
headers, a uuid cursor), far below what would cost the server anything to parse and log.
"""

from __future__ import annotations

from itertools import chain
from typing import Final

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi import send_json
from .refusals import Refusal

MAX_HEADERS: Final = 100
MAX_HEADER_BYTES: Final = 12 * 1024  # names and values of all headers together, under h11's 16 KiB
MAX_URL_BYTES: Final = 8 * 1024  # path and query string (as RFC 9110 recommends supporting)
MAX_QUERY_PARAMETERS: Final = 64

# Every request meets these limits first, whatever its route.
REFUSALS: Final = (
    Refusal(400, f"the query string holds more than {MAX_QUERY_PARAMETERS} parameters"),
    Refusal(414, f"the path and query string are over {MAX_URL_BYTES // 1024} KiB"),
    Refusal(
        431,
        f"more than {MAX_HEADERS} request headers, or over {MAX_HEADER_BYTES // 1024} KiB of them",
    ),
)


def head_problem(scope: Scope) -> tuple[int, str] | None:
    """`(status, detail)` when the request's head is over a limit, else None."""
    headers = scope["headers"]
    if len(headers) > MAX_HEADERS:
        return 431, f"Too many request headers: at most {MAX_HEADERS}"
    # Summed in C (`map` over the flattened pairs): this runs in front of every request.
    if sum(map(len, chain.from_iterable(headers))) > MAX_HEADER_BYTES:
        return 431, f"Request headers too large: at most {MAX_HEADER_BYTES} bytes in all"
    query: bytes = scope["query_string"]
    if len(scope.get("raw_path") or scope["path"]) + len(query) > MAX_URL_BYTES:
        return 414, f"URL too long: at most {MAX_URL_BYTES} bytes of path and query"
    if query and query.count(b"&") >= MAX_QUERY_PARAMETERS:
        return 400, f"Too many query parameters: at most {MAX_QUERY_PARAMETERS}"
    return None


class HeadLimits:
    """ASGI layer: refuses a request whose head is over a limit, before any other layer reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = head_problem(scope)
            if problem is not None:
                status, detail = problem
                # The body (if any) is never read, so the connection cannot carry another request.
                await send_json(send, status, orjson.dumps({"detail": detail}), close=True)
                return
        await self.app(scope, receive, send)
