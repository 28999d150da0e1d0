"""The list benchmark's limit: a bare ASGI app that answers every request with one fixed page.

`list_endpoint.py` serves it with the same uvicorn options as `ckpt serve`, and points
`CKPT_BENCH_LIMIT_BODY` at the bytes of a real 20-item page fetched from our server, so the only
difference between the two servers is the work our application does per request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BODY = Path(os.environ["CKPT_BENCH_LIMIT_BODY"]).read_bytes()
# The same headers as the fast path sends: content-type and content-length.
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ],
}
MESSAGE = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(START)
    await send(MESSAGE)
