"""Registration's fast path: a bare ASGI handler for well-formed `POST .../checkpoints` requests.

Trainers register a checkpoint after every step, and FastAPI's request handling (routing, dependency
solving, pydantic validation) cost more than the database write. This handler accepts only bodies
that are plainly valid (a conservative subset of `CheckpointCreate`); anything else, and every error,
is handed to the FastAPI route with the body replayed, which answers with the contract's exact error;
an outage is answered here (503), as on the list fast path. It reads the body itself, whole and within
its route's limit (413 over it), so it assumes nothing about the layers in front of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..contract import CHECKPOINTS_PATH, MAX_METRICS, MAX_NAME_LENGTH, MAX_STEP
from ..storage.base import Storage
from ..storage.errors import DatabaseUnavailable, StorageError
from .asgi import PathTemplate, header, replaying, send_json
from .auth import AuthenticationFailed, ReadOnlyKey, entity_for_authorization
from .errors import storage_error_response
from .limits import BodyLimit, read_body
from .responses import checkpoint_detail


class RegisterCheckpointFastPath:
    # The route it shadows, by the router's own template (tests/server/test_fast_paths.py holds
    # the two together).
    method = "POST"
    route = PathTemplate(CHECKPOINTS_PATH)

    def __init__(
        self, app: ASGIApp, storage: Callable[[], Storage | None], body_limit: BodyLimit
    ) -> None:
        if body_limit.max_bytes is None:
            raise ValueError("registration reads a JSON body: its route needs a bounded body limit")
        self.app = app
        self.storage = storage
        self.max_bytes = body_limit.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        model_id = self.route.match(scope["path"])
        storage = self.storage()
        if model_id is None or storage is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(scope, receive, send, self.max_bytes)
        if body is None:  # over the limit (answered 413) or the client left
            return
        try:
            answered = await self.register(scope, storage, model_id, body, send)
        except DatabaseUnavailable as exc:
            # As on the list fast path: the full route would only wait for the database again.
            await storage_error_response(exc)(scope, receive, send)
            return
        if not answered:
            await self.app(scope, replaying(body, receive), send)

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
            # A read-only key raises `ReadOnlyKey` here, as on the route: it is answered there.
            entity = await entity_for_authorization(
                authorization.decode("latin-1") if authorization is not None else None,
                storage,
                self.method,
            )
            checkpoint, created = await storage.register_checkpoint(entity, model_id, step, metrics)
        except DatabaseUnavailable:
            raise
        except (AuthenticationFailed, ReadOnlyKey, StorageError):
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
        if not 1 <= len(name) <= MAX_NAME_LENGTH or "\x00" in name or not _utf8(name):
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
