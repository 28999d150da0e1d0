"""Small pieces shared by the bare ASGI handlers in front of the FastAPI app (fast paths, limits)."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

CHECKPOINTS_PREFIX = "/v1/preview/models/"
CHECKPOINTS_SUFFIX = "/checkpoints"


def checkpoints_model_id(path: str) -> str | None:
    """The model id in `/v1/preview/models/{model_id}/checkpoints`, or None for any other path."""
    if not (path.startswith(CHECKPOINTS_PREFIX) and path.endswith(CHECKPOINTS_SUFFIX)):
        return None
    model_id = path[len(CHECKPOINTS_PREFIX) : -len(CHECKPOINTS_SUFFIX)]
    return model_id if model_id and "/" not in model_id else None


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a header, as Starlette's `request.headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def send_json(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def replaying(message: Message, receive: Receive) -> Receive:
    """A `receive` that first yields the already-read request `message`, then the real ones."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return message
        return await receive()

    return replay
