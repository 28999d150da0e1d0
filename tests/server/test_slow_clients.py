"""Slow clients cannot hold `ckpt serve`: trickled headers and bodies are closed in time with 408, the
connection cap refuses the excess with 503, and healthy requests and uploads are unaffected."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ckpt_registry.storage.migrate import upgrade
from tests import pg
from tests.conftest import add_key

# Short limits, so the test takes seconds: the defaults are 30 s, and 240 B/s after 5 s.
HEADER_TIMEOUT = 2.0
BODY_RATE_GRACE = 1.0
TRICKLE_SECONDS = 2.0  # one byte every 2 s, as in the issue
SLOW_HEADERS = 150
SLOW_BODIES = 150


@pytest.fixture(scope="module", autouse=True)
def descriptors() -> None:
    """Room for 300 slow connections and the server's side of them on this machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def start(tmp_path: Path, **env: str) -> tuple[pg.ServerProcess, str]:
    """A `ckpt serve` on a fresh SQLite database with the given settings, and a key for it."""
    database_url = f"sqlite:///{tmp_path / 'ckpt.db'}"
    upgrade(database_url)
    key = add_key(database_url)
    server = pg.start_servers(database_url, 1, tmp_path, env=env)[0]
    return server, key


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[pg.ServerProcess, str]]:
    server, key = start(
        tmp_path_factory.mktemp("slow"),
        CKPT_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        CKPT_BODY_RATE_GRACE_SECONDS=str(BODY_RATE_GRACE),
    )
    try:
        yield server, key
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-4000:]


class Trickler(asyncio.Protocol):
    """A client connection that keeps what the server sends and notes when it closed."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, _exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(time.monotonic())


async def trickle(port: int, head: bytes, body: bytes) -> tuple[bytes, float]:
    """Send `head` at once, then `body` one byte every 2 s; the server's answer and when the
    connection was closed, seconds after it was opened."""
    opened = time.monotonic()
    _, client = await asyncio.get_running_loop().create_connection(Trickler, "127.0.0.1", port)

    async def send() -> None:
        client.transport.write(head)
        for index in range(len(body)):
            await asyncio.sleep(TRICKLE_SECONDS if index else 0)
            # Once answered, stop: a byte sent after the server's close would be answered with a
            # reset, which can discard the 408 before it is read.
            if client.received or client.transport.is_closing():
                return
            client.transport.write(body[index : index + 1])

    sender = asyncio.create_task(send())
    try:
        closed = await asyncio.wait_for(asyncio.shield(client.closed), timeout=60)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        client.transport.close()
    return bytes(client.received), closed - opened


async def normal_requests(url: str, key: str, model_id: str, until: asyncio.Event) -> list[float]:
    """List the model's checkpoints and register one, over and over: each request's latency."""
    latencies = []
    step = 0
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        while not until.is_set():
            started = time.monotonic()
            listed = await client.get(f"/preview/models/{model_id}/checkpoints")
            assert listed.status_code == 200, listed.text
            latencies.append(time.monotonic() - started)
            started = time.monotonic()
            step += 1
            registered = await client.post(
                f"/preview/models/{model_id}/checkpoints", json={"step": step}
            )
            assert registered.status_code == 201, registered.text
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
    return latencies


def create_model_and_checkpoint(server: pg.ServerProcess, key: str, name: str) -> tuple[str, str]:
    with server.client(key) as api:
        created = api.post(
            "/preview/models", json={"project": "slow", "name": name, "base_model": "b"}
        )
        assert created.status_code == 200, created.text
        model_id = created.json()["id"]
        registered = api.post(f"/preview/models/{model_id}/checkpoints", json={"step": 0})
        assert registered.status_code == 201, registered.text
        return model_id, registered.json()["id"]


@pytest.mark.serial  # it bounds the latency of the normal requests
def test_hundreds_of_slow_connections_are_closed_in_time_while_others_are_served(
    served: tuple[pg.ServerProcess, str],
) -> None:
    server, key = served
    model_id, checkpoint_id = create_model_and_checkpoint(server, key, "trickled")
    register = f"/v1/preview/models/{model_id}/checkpoints"
    upload = f"/v1/preview/models/{model_id}/checkpoints/{checkpoint_id}/files/weights.bin"
    auth = f"Authorization: Bearer {key}\r\n".encode()
    slow_headers = b"GET /v1/health HTTP/1.1\r\nHost: registry\r\nAccept: */*\r\n\r\n"
    # Half the slow bodies are registrations (a JSON body read whole), half file uploads (streamed).
    slow_register = (
        f"POST {register} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
        "Content-Length: 200\r\n".encode()
        + auth
        + b"\r\n"
    )
    slow_upload = (
        f"PUT {upload} HTTP/1.1\r\nHost: registry\r\nContent-Length: 100000\r\n".encode()
        + auth
        + b"\r\n"
    )

    async def run() -> tuple[list[tuple[bytes, float]], list[tuple[bytes, float]], list[float]]:
        done = asyncio.Event()
        normal = asyncio.create_task(normal_requests(server.url, key, model_id, done))
        headers = [trickle(server.port, b"", slow_headers) for _ in range(SLOW_HEADERS)]
        bodies = [
            trickle(server.port, slow_register if index % 2 else slow_upload, b'{"step": 1' * 20)
            for index in range(SLOW_BODIES)
        ]
        try:
            closed = await asyncio.gather(*headers, *bodies)
            await asyncio.sleep(1)  # normal requests go on after the slow ones are gone
        finally:
            done.set()
        return closed[:SLOW_HEADERS], closed[SLOW_HEADERS:], await normal

    slow_header_results, slow_body_results, latencies = asyncio.run(run())

    # Each is closed after its limit and a tick of the watch (1 s), with room for a busy machine;
    # unchecked, the first kind would trickle for 2 minutes and the second for 6 minutes.
    for answer, seconds in slow_header_results:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'{"detail":"Request headers did not arrive in time' in answer
        assert HEADER_TIMEOUT <= seconds < HEADER_TIMEOUT + 8, seconds
    for answer, seconds in slow_body_results:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'{"detail":"Request body arrived too slowly' in answer
        assert BODY_RATE_GRACE <= seconds < BODY_RATE_GRACE + 8, seconds
    latencies.sort()
    assert len(latencies) > 20
    assert latencies[int(len(latencies) * 0.99)] < 2.0, latencies[-5:]

    with server.client(key) as api:
        # No trickled registration or upload left anything behind.
        page = api.get(f"/preview/models/{model_id}/checkpoints", params={"limit": 1}).json()
        assert page["data"][0]["step"] == 0
        files = api.get(f"/preview/models/{model_id}/checkpoints/{checkpoint_id}/files")
        assert files.json()["data"] == []


def test_a_large_upload_at_a_healthy_rate_is_unaffected(
    served: tuple[pg.ServerProcess, str],
) -> None:
    server, key = served
    model_id, checkpoint_id = create_model_and_checkpoint(server, key, "large")
    path = f"/preview/models/{model_id}/checkpoints/{checkpoint_id}/files/model.safetensors"
    content = os.urandom(1024 * 1024) * 64  # 64 MiB, well past the 1 s grace at any rate

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 1024 * 1024):
            yield content[start : start + 1024 * 1024]

    with server.client(key) as api:
        stored = api.put(path, content=chunks(), timeout=120)
        assert stored.status_code == 201, stored.text
        assert stored.json()["sha256"] == hashlib.sha256(content).hexdigest()
        assert api.get(path, timeout=120).content == content


def test_a_slow_but_steady_body_above_the_minimum_rate_is_served(
    served: tuple[pg.ServerProcess, str],
) -> None:
    """A body at ~1,000 bytes a second (above 240) for 3 s, past the grace period, is stored."""
    server, key = served
    model_id, _ = create_model_and_checkpoint(server, key, "steady")
    body = b'{"step": 7, "metrics": {"loss": 0.5}}'.ljust(3000)

    async def steady() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            await asyncio.sleep(0.1)
            yield body[start : start + 100]

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            return await client.post(
                f"/preview/models/{model_id}/checkpoints",
                content=steady(),
                headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
            )

    response = asyncio.run(run())
    assert response.status_code == 201, response.text


def test_connections_over_the_cap_are_refused_quickly(tmp_path: Path) -> None:
    server, _ = start(tmp_path, CKPT_MAX_CONNECTIONS="20")
    try:

        async def run() -> None:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                started = time.monotonic()
                refused = await client.get("/health")
                assert time.monotonic() - started < 1.0
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json() == {
                "detail": "The server has too many connections; retry shortly"
            }
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                assert (await client.get("/health")).status_code == 200

        asyncio.run(run())
    finally:
        server.stop()
