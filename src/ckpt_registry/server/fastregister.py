"""Registration's fast path: a bare ASGI handler for well-formed `POST .../checkpoints` requests.

Trainers register a checkpoint after every step, and FastAPI's request handling (routing, dependency
solving, pydantic validation) cost more than the database write. This handler accepts only bodies
that are plainly valid (a conservative subset of `CheckpointCreate`); anything else, and every error,
is handed to the FastAPI route with the body replayed, which answers with the contract's exact error;
an outage is answered here (503), as on the list fast path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..storage.base import Storage
from ..storage.errors import MAX_METRICS, DatabaseUnavailable, StorageError
from .asgi import checkpoints_model_id, header, replaying, send_json
from .auth import AuthenticationFailed, entity_for_authorization
from .errors import storage_error_response
from .responses import checkpoint_detail
from .schemas import MAX_STEP


class RegisterCheckpointFastPath:
    def __init__(self, app: ASGIApp, storage: Callable[[], Storage | None]) -> None:
        self.app = app
        self.storage = storage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        model_id = checkpoints_model_id(scope["path"])
        storage = self.storage()
        if model_id is None or storage is None:
            await self.app(scope, receive, send)
            return
        # BodySizeLimit (outside us) has read the whole body: it arrives as one message.
        message = await receive()
        body = message.get("body", b"")
        try:
            answered = await self.register(scope, storage, model_id, body, send)
        except DatabaseUnavailable as exc:
            # As on the list fast path: the full route would only wait for the database again.
            await storage_error_response(exc)(scope, receive, send)
            return
        if not answered:
            await self.app(scope, replaying(message, receive), send)

    async def register(
        self, scope: Scope, storage: Storage, model_id: str, body: bytes, send: Send
    ) -> bool:
        """Answer the request and return True, or return False (nothing sent, nothing stored)."""
        if header(scope, b"content-type") != b"application/json":
            return False
        parsed = plain_registration(body)
        if parsed is None:
            return False
        step, metrics = parsed
        try:
            authorization = header(scope, b"authorization")
            entity = await entity_for_authorization(
                authorization.decode("latin-1") if authorization is not None else None, storage
            )
            checkpoint, created = await storage.register_checkpoint(entity, model_id, step, metrics)
        except DatabaseUnavailable:
            raise
        except (AuthenticationFailed, StorageError):
            return False
        await send_json(send, 201 if created else 200, orjson.dumps(checkpoint_detail(checkpoint)))
        return True


def plain_registration(body: bytes) -> tuple[int, dict[str, float]] | None:
    """`(step, metrics)` when the body is plainly a valid `CheckpointCreate`, else None."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not data.keys() <= {"step", "metrics"}:
        return None
    step = data.get("step")
    metrics = data.get("metrics", {})
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        return None
    if type(metrics) is not dict or len(metrics) > MAX_METRICS:
        return None
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if not 1 <= len(name) <= 256 or "\x00" in name or not _utf8(name):
            return None
        if type(value) is float:
            if not math.isfinite(value):
                return None
        elif type(value) is not int:
            return None
        values[name] = float(value)
    return step, values


def _utf8(text: str) -> bool:
    """False for text UTF-8 cannot hold (lone surrogates), which `schemas.Storable` refuses."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
