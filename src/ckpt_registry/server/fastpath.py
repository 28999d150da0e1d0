"""The list endpoint's fast path: a bare ASGI handler in front of the FastAPI app.

Listing is the hot path (trainers ask for the latest step after every step), and the framework's
request handling costs several times the query. This handler serves only well-formed, authorised list
requests; anything else (a bad parameter, a bad key, an unknown model or cursor) is handed to the
FastAPI route, which answers with the contract's exact error. An outage is answered here (503, through
the same error mapping), since the route would only wait for the database again. Both paths encode a
page with `responses.checkpoint_page_body`, so they cannot drift apart in what a page holds.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from ..contract import (
    CHECKPOINTS_PATH,
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    LIST_LIMIT_MIN,
    LIST_ORDER_DEFAULT,
    LIST_ORDERS,
    Order,
)
from ..storage.base import Storage
from ..storage.errors import DatabaseUnavailable, StorageError
from .asgi import PathTemplate, header, send_json
from .auth import AuthenticationFailed, entity_for_authorization
from .errors import storage_error_response
from .responses import checkpoint_page_body


class ListCheckpointsFastPath:
    # The route it shadows, by the router's own template (tests/server/test_fast_paths.py holds
    # the two together).
    method = "GET"
    route = PathTemplate(CHECKPOINTS_PATH)

    def __init__(self, app: ASGIApp, storage: Callable[[], Storage | None]) -> None:
        self.app = app
        self.storage = storage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == self.method:
            try:
                body = await self.page(scope)
            except DatabaseUnavailable as exc:
                # Answer the outage here: the full route would only wait for the database again.
                await storage_error_response(exc)(scope, receive, send)
                return
            if body is not None:
                await send_json(send, 200, body)
                return
        await self.app(scope, receive, send)

    async def page(self, scope: Scope) -> bytes | None:
        """The page's body, or None when the full route should answer this request."""
        model_id = self.route.match(scope["path"])
        storage = self.storage()
        if model_id is None or storage is None:
            return None
        query = parse_query(scope["query_string"])
        if query is None:
            return None
        after, limit, order = query
        authorization = header(scope, b"authorization")
        try:
            entity = await entity_for_authorization(
                authorization.decode("latin-1") if authorization is not None else None,
                storage,
                self.method,
            )
            page = await storage.list_checkpoints(
                entity, model_id, after=after, limit=limit, order=order
            )
        except DatabaseUnavailable:
            raise
        except (AuthenticationFailed, StorageError):
            return None
        return checkpoint_page_body(page)


# The query's text to the `Order` it names (a lookup that also narrows the type).
ORDERS: dict[str, Order] = {order: order for order in LIST_ORDERS}


def parse_query(query_string: bytes) -> tuple[str | None, int, Order] | None:
    """`(after, limit, order)` when every parameter is plainly valid, else None."""
    after: str | None = None
    limit: int = LIST_LIMIT_DEFAULT
    order: Order = LIST_ORDER_DEFAULT
    seen: set[str] = set()
    text = query_string.decode("latin-1")
    # Plain `name=value&...` (what clients send for a uuid cursor) splits without `parse_qsl`.
    pairs = (
        parse_qsl(text, keep_blank_values=True)
        if "%" in text or "+" in text or ";" in text
        else [pair.partition("=")[::2] for pair in text.split("&") if pair]
    )
    for name, value in pairs:
        if name in seen:
            return None
        seen.add(name)
        if name == "after":
            after = value
        elif name == "limit":
            if not (
                value.isascii()
                and value.isdigit()
                and LIST_LIMIT_MIN <= int(value) <= LIST_LIMIT_MAX
            ):
                return None
            limit = int(value)
        elif name == "order":
            if value not in ORDERS:
                return None
            order = ORDERS[value]
    return after, limit, order
