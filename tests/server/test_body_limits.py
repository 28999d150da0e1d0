"""Body limits are declared per route: every JSON route refuses a body over 1 MiB with 413 before it
acts, while a route may declare a larger limit or a streamed body that is never buffered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request

from ckpt_registry.contract import MAX_JSON_BODY_BYTES
from ckpt_registry.server.asgi import stacked
from ckpt_registry.server.limits import (
    STREAMED,
    BodyLimit,
    BodyLimits,
    BodySizeLimit,
    request_body,
)
from tests.conftest import RunningServer

from .helpers import assert_detail, register, snapshot

MIB = 1024 * 1024
CHUNK = 64 * 1024


def chunks(size: int) -> Iterator[bytes]:
    """`size` bytes of a JSON string, in pieces as a chunked upload sends them."""
    body = b'"' + b"x" * (size - 2) + b'"'
    for start in range(0, size, CHUNK):
        yield body[start : start + CHUNK]


async def achunks(size: int) -> AsyncIterator[bytes]:
    for chunk in chunks(size):
        yield chunk


def test_every_json_route_refuses_a_body_over_the_limit(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    checkpoint_id = register(api, model_id, 1, {"loss": 1.0})["id"]
    document = httpx.get(server.url.removesuffix("/v1") + "/openapi.json").json()
    json_routes = [
        (method.upper(), path)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert len(json_routes) >= 5, json_routes  # create model, register, delete, patch, retention
    before = snapshot(api)
    for method, path in json_routes:
        target = server.url.removesuffix("/v1") + path.format(
            model_id=model_id, checkpoint_id=checkpoint_id, upload_id=checkpoint_id
        )
        for content in (b"".join(chunks(MAX_JSON_BODY_BYTES + 1)), chunks(MAX_JSON_BODY_BYTES + 1)):
            response = api.request(
                method, target, content=content, headers={"Content-Type": "application/json"}
            )
            assert_detail(response, 413)
    assert snapshot(api) == before


def limited_app(calls: list[str]) -> Any:
    """A test-only app with the server's body-limit machinery and one route of each kind."""
    router = APIRouter()

    @router.post("/json")
    async def json_body(body: dict[str, Any]) -> dict[str, int]:
        calls.append("json")
        return {"keys": len(body)}

    @router.put("/large")
    @request_body(BodyLimit(4 * MIB))
    async def large_body(request: Request) -> dict[str, int]:
        calls.append("large")
        return {"size": len(await request.body())}

    @router.put("/streamed/{name}")
    @request_body(STREAMED)
    async def streamed_body(request: Request) -> dict[str, int]:
        calls.append("streamed")
        messages = size = 0
        async for chunk in request.stream():
            messages += 1 if chunk else 0
            size += len(chunk)
        return {"size": size, "messages": messages}

    api = FastAPI()
    api.include_router(router)
    limits = BodyLimits(router.routes, default=BodyLimit(MIB))
    return stacked([lambda app: BodySizeLimit(app, limits)], api)


def send(app: Any, method: str, path: str, content: bytes | AsyncIterator[bytes]) -> httpx.Response:
    async def request() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(
                method, path, content=content, headers={"Content-Type": "application/json"}
            )

    return asyncio.run(request())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_route_declares_its_own_limit_or_a_streamed_body(chunked: bool) -> None:
    calls: list[str] = []
    app = limited_app(calls)

    def body(size: int) -> bytes | AsyncIterator[bytes]:
        return achunks(size) if chunked else b"".join(chunks(size))

    # Undeclared: the JSON limit, refused before the route acts; an unknown path gets it too.
    assert_detail(send(app, "POST", "/json", body(MIB + 1)), 413)
    assert_detail(send(app, "POST", "/nowhere", body(MIB + 1)), 413)
    assert send(app, "POST", "/json", b'{"a": 1}').json() == {"keys": 1}
    # Declared larger.
    assert send(app, "PUT", "/large", body(3 * MIB)).json() == {"size": 3 * MIB}
    assert_detail(send(app, "PUT", "/large", body(4 * MIB + 1)), 413)
    # Declared streamed: no limit here, and the route reads the body as it arrives.
    streamed = send(app, "PUT", "/streamed/weights", body(8 * MIB)).json()
    assert streamed["size"] == 8 * MIB
    if chunked:
        assert streamed["messages"] == 8 * MIB // CHUNK, "the streamed body was buffered"

    assert calls == ["json", "large", "streamed"]
