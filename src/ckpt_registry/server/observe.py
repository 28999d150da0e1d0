"""The request layer: the outermost bare ASGI layer, which gives each request its id (`X-Request-ID`,
the client's or a new one, echoed), counts and times it for the metrics, writes the access line, and
answers `GET /metrics` when the metrics are served on the API's port."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..contract import CHECKPOINTS_PATH
from .asgi import PathTemplate, header
from .metrics import METRICS_PATH, UNMATCHED, Metrics
from .requestlog import RequestContext, accepted_request_id, current_request, log_access

# Methods whose requests carry a body worth counting; the others' `receive` is left unwrapped.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CHECKPOINTS = PathTemplate(CHECKPOINTS_PATH)


def request_ids() -> Callable[[], bytes]:
    """Ids unique across processes and restarts (a random prefix per process, then a counter):
    a fraction of a `uuid4`'s cost on every request."""
    prefix = os.urandom(6).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}".encode()


def route_template(scope: Scope) -> str:
    """The template of the route that answered (set by the router), or the fast paths' route."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", UNMATCHED))
    # The fast paths answer before the router runs; only they serve this template without it.
    if _CHECKPOINTS.match(scope["path"]) is not None:
        return CHECKPOINTS_PATH
    return UNMATCHED


class RequestLayer:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None,
        *,
        serve_metrics: bool,
        access_log: bool,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.serve_metrics = serve_metrics and metrics is not None
        self.access_log = access_log
        self.new_id = request_ids()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        if self.serve_metrics and scope["path"] == METRICS_PATH and method in ("GET", "HEAD"):
            await self.send_metrics(send, method)
            return
        request_id = accepted_request_id(header(scope, b"x-request-id")) or self.new_id()
        context = RequestContext(request_id.decode("ascii"))
        token = current_request.set(context)
        status = 500  # what the client sees if the app fails before answering
        received = sent = 0

        async def send_observed(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        start = time.perf_counter()
        try:
            await self.app(
                scope, receive_counted if method in _BODY_METHODS else receive, send_observed
            )
        finally:
            seconds = time.perf_counter() - start
            route = route_template(scope)
            if self.metrics is not None:
                self.metrics.observe_request(method, route, status, seconds, received, sent)
                if status == 201 and method == "POST" and route == CHECKPOINTS_PATH:
                    self.metrics.registrations.inc()
            if self.access_log:
                log_access(method, route, status, seconds)
            current_request.reset(token)

    async def send_metrics(self, send: Send, method: str) -> None:
        assert self.metrics is not None
        self.metrics.publish()
        # Reading the workers' files in multi-process mode is disk work: off the event loop.
        body, content_type = await asyncio.to_thread(self.metrics.exposition)
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
