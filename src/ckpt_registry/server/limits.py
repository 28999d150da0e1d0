"""Request body limit: bodies over the limit get 413 before any handler (or storage) sees them."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi import header, replaying, send_json


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self.too_large(send)
            return
        # Read the whole (bounded) body first, so a chunked body over the limit is refused before the
        # application has acted on any of it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self.too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, replaying(message, receive), send)

    async def too_large(self, send: Send) -> None:
        detail = f"Request body too large: the limit is {self.max_bytes} bytes"
        # The rest of the body is never read, so the connection cannot carry another request.
        await send_json(send, 413, orjson.dumps({"detail": detail}), close=True)
