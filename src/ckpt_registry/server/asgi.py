"""Small pieces shared by the bare ASGI layers in front of the FastAPI app (fast paths, body limits):
the stack they form, path matching, header reading and JSON answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A layer wraps the app behind it: `layer(app)` is the ASGI app the requests reach first.
Layer = Callable[[ASGIApp], ASGIApp]


def stacked(layers: Sequence[Layer], app: ASGIApp) -> ASGIApp:
    """`layers[0](layers[1](... layers[-1](app)))`: the first layer sees every request first."""
    for layer in reversed(layers):
        app = layer(app)
    return app


class PathTemplate:
    """A route path with one `{parameter}` segment, such as `contract.CHECKPOINTS_PATH`.

    A fast path matches its route's own template string by prefix and suffix (no regex, no routing
    table), the way Starlette's `{name}` matches: one non-empty segment without `/`.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.prefix, brace, rest = template.partition("{")
        self.parameter, close, self.suffix = rest.partition("}")
        if not (brace and close and self.parameter) or "{" in self.suffix or ":" in self.parameter:
            raise ValueError(f"{template!r} is not a path with one plain {{parameter}}")
        self.start, self.stop = len(self.prefix), -len(self.suffix) or None

    def match(self, path: str) -> str | None:
        """The parameter's value in `path`, or None when `path` is not this template's."""
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        value = path[self.start : self.stop]
        return value if value and "/" not in value else None


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


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that first yields the already-read request body, whole, then the real messages."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
