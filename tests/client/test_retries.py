"""Retries, backoff, Retry-After and timeouts, against small scripted HTTP servers of our own.

The real server never fails on cue, so these tests stand up a stdlib HTTP server on 127.0.0.1
that answers from a script: e.g. 503, 503, then 200.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ckpt_registry.client import (
    APITimeoutError,
    AsyncClient,
    Client,
    ConflictError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
)
from ckpt_registry.client._base import APIRequest, RequestContent, parse_retry_after

MODEL_ID = "2f1c6f1e-0000-4000-8000-000000000001"
CHECKPOINT_ID = "2f1c6f1e-0000-4000-8000-000000000002"
MODEL: dict[str, Any] = {
    "id": MODEL_ID,
    "entity": "default",
    "project": "p",
    "name": "n",
    "base_model": "b",
    "run_id": None,
}
CHECKPOINT: dict[str, Any] = {
    "id": CHECKPOINT_ID,
    "step": 1,
    "metrics": {"loss": 1},
    "created_at": "2026-11-29T04:54:21.123456Z",
    "updated_at": "2026-11-29T04:54:21.123456Z",
}
RETENTION = {"dry_run": True, "kept_steps": [1], "deleted_steps": []}


class Reply:
    def __init__(
        self,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.status = status
        self.body = {"detail": "scripted failure"} if body is None else body
        self.headers = headers or {}
        self.delay = delay


class ScriptedServer:
    """Answers the n-th request with ``script[n]`` (the last reply repeats) and records requests
    (and their bodies and headers)."""

    def __init__(self, script: list[Reply]) -> None:
        self.script = script
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def read_body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("content-length") or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()  # the empty line after the last chunk
                return body

            def answer(self) -> None:
                server.bodies.append(self.read_body())
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                server.requests.append((self.command, self.path))
                reply = server.script[min(len(server.requests), len(server.script)) - 1]
                time.sleep(reply.delay)
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                # A client that timed out has hung up by now; that is the point of the test.
                with contextlib.suppress(ConnectionError):
                    self.end_headers()
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval makes shutdown() quick.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


# Retries in these tests wait milliseconds, not seconds.
FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_total=5.0)


@contextmanager
def scripted_client(script: list[Reply], **options: Any) -> Iterator[tuple[ScriptedServer, Client]]:
    """A :class:`Client` of a :class:`ScriptedServer` answering from ``script``."""
    options.setdefault("retry_policy", FAST)
    with ScriptedServer(script) as server, Client(api_key="k", base_url=server.url, **options) as c:
        yield server, c


def test_a_get_is_retried_through_two_503s() -> None:
    with scripted_client([Reply(503), Reply(503), Reply(200, MODEL)]) as (server, client):
        model = client.models.get(MODEL_ID)

    assert model.name == "n"
    assert len(server.requests) == 3


def test_retries_stop_after_max_retries() -> None:
    with (
        scripted_client([Reply(503)], max_retries=2) as (server, client),
        pytest.raises(InternalServerError) as caught,
    ):
        client.models.get(MODEL_ID)

    assert caught.value.status_code == 503
    assert caught.value.detail == "scripted failure"
    assert len(server.requests) == 3


def test_429_waits_as_long_as_retry_after_says() -> None:
    script = [Reply(429, headers={"Retry-After": "0.3"}), Reply(200, MODEL)]
    with scripted_client(script) as (server, client):
        started = time.monotonic()
        client.models.get(MODEL_ID)
        waited = time.monotonic() - started

    assert len(server.requests) == 2
    assert waited >= 0.3


def test_a_retry_after_beyond_the_total_budget_is_not_waited_for() -> None:
    policy = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_total=1.0)
    script = [Reply(429, headers={"Retry-After": "120"})]
    started = time.monotonic()
    with (
        scripted_client(script, retry_policy=policy) as (server, client),
        pytest.raises(RateLimitError) as caught,
    ):
        client.models.get(MODEL_ID)

    assert time.monotonic() - started < 1.0
    assert caught.value.status_code == 429
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("call", "attempts"),
    [
        # Safe to repeat: retried.
        (lambda c: c.checkpoints.register(MODEL_ID, step=1, metrics={"loss": 1.0}), 3),
        (lambda c: c.checkpoints.delete(MODEL_ID, steps=[1]), 3),
        (lambda c: c.models.create(project="p", name="n", base_model="b", return_existing=True), 3),
        (lambda c: c.checkpoints.retention(MODEL_ID, keep_latest=1, dry_run=True), 3),
        # A repeat could do something else than the first attempt: never retried.
        (lambda c: c.checkpoints.update_metrics(MODEL_ID, CHECKPOINT_ID, {"a": 1.0}), 1),
        (lambda c: c.models.create(project="p", name="n", base_model="b"), 1),
        (lambda c: c.checkpoints.retention(MODEL_ID, keep_latest=1), 1),
    ],
)
def test_only_idempotent_requests_are_retried(call: Any, attempts: int) -> None:
    with (
        scripted_client([Reply(502)]) as (server, client),
        pytest.raises(InternalServerError),
    ):
        call(client)

    assert len(server.requests) == attempts


@pytest.mark.parametrize(("status", "error"), [(404, NotFoundError), (409, ConflictError)])
def test_client_errors_are_not_retried(status: int, error: type[Exception]) -> None:
    with scripted_client([Reply(status)]) as (server, client), pytest.raises(error):
        client.checkpoints.register(MODEL_ID, step=1)

    assert len(server.requests) == 1


def test_a_408_is_retried() -> None:
    with scripted_client([Reply(408), Reply(200, CHECKPOINT)]) as (server, client):
        checkpoint = client.checkpoints.get(MODEL_ID, CHECKPOINT_ID)

    assert checkpoint.created_at == datetime(2026, 11, 29, 4, 54, 21, 123456, tzinfo=UTC)
    assert len(server.requests) == 2


def test_a_timeout_is_retried_then_raised() -> None:
    script = [Reply(200, MODEL, delay=0.3)]
    with (
        scripted_client(script, timeout=0.05, max_retries=1) as (server, client),
        pytest.raises(APITimeoutError) as caught,
    ):
        client.models.get(MODEL_ID)

    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    assert len(server.requests) == 2


def test_max_retries_zero_sends_once() -> None:
    script = [Reply(503), Reply(200, MODEL)]
    with (
        scripted_client(script, max_retries=0) as (server, client),
        pytest.raises(InternalServerError),
    ):
        client.models.get(MODEL_ID)

    assert len(server.requests) == 1


def raw_upload(body: RequestContent) -> APIRequest[httpx.Response]:
    """An idempotent request with a raw body, as a file upload will be."""
    return APIRequest(
        "PUT",
        "upload",
        lambda response: response,
        idempotent=True,
        content=body,
        headers={"Content-Type": "application/octet-stream", "Content-Digest": "sha-256=:x:"},
    )


def one_shot() -> Iterator[bytes]:
    yield b"first "
    yield b"second"


@pytest.mark.parametrize(
    ("reply", "error"),
    [(Reply(503), InternalServerError), (Reply(200, MODEL, delay=0.3), APITimeoutError)],
    ids=["503", "timeout"],
)
def test_a_body_from_a_one_shot_iterator_is_sent_once(reply: Reply, error: type[Exception]) -> None:
    with scripted_client([reply], timeout=0.1) as (server, client), pytest.raises(error):
        client._send(raw_upload(one_shot()))

    assert len(server.requests) == 1
    assert server.bodies == [b"first second"]


@pytest.mark.parametrize("body", [b"first second", [b"first ", b"second"]], ids=["bytes", "list"])
def test_a_body_that_can_be_sent_again_is_retried_whole(body: RequestContent) -> None:
    with scripted_client([Reply(503), Reply(503), Reply(200, {})]) as (server, client):
        response = client._send(raw_upload(body))

    assert response.status_code == 200
    assert server.bodies == [b"first second"] * 3
    assert server.headers[-1]["content-digest"] == "sha-256=:x:"
    assert server.headers[-1]["content-type"] == "application/octet-stream"


@pytest.mark.anyio
async def test_the_async_client_sends_a_one_shot_body_once() -> None:
    async def async_one_shot() -> AsyncIterator[bytes]:
        yield b"only once"

    with ScriptedServer([Reply(503)]) as server:
        async with AsyncClient(api_key="k", base_url=server.url, retry_policy=FAST) as client:
            with pytest.raises(InternalServerError):
                await client._send(raw_upload(async_one_shot()))

    assert server.bodies == [b"only once"]


def test_a_streamed_response_that_is_retried_is_closed_first() -> None:
    seen: list[httpx.Response] = []
    hooks = {"response": [seen.append]}
    request = APIRequest("GET", "stream", lambda response: response, idempotent=True, stream=True)
    with (
        httpx.Client(event_hooks=hooks) as http,
        scripted_client([Reply(503), Reply(200, MODEL)], http_client=http) as (server, client),
    ):
        response = client._send(request)

        assert [r.status_code for r in seen] == [503, 200]
        assert seen[0].is_closed
        assert not response.is_closed
        assert json.loads(response.read()) == MODEL
        assert len(server.requests) == 2


@pytest.mark.anyio
async def test_the_async_client_retries_too() -> None:
    script = [Reply(503), Reply(429, headers={"Retry-After": "0"}), Reply(200, RETENTION)]
    with ScriptedServer(script) as server:
        async with AsyncClient(api_key="k", base_url=server.url, retry_policy=FAST) as client:
            result = await client.checkpoints.retention(MODEL_ID, keep_latest=1, dry_run=True)

    assert result.kept_steps == [1]
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_the_async_client_times_out() -> None:
    with ScriptedServer([Reply(200, MODEL, delay=0.3)]) as server:
        async with AsyncClient(
            api_key="k", base_url=server.url, timeout=0.05, max_retries=0
        ) as client:
            with pytest.raises(APITimeoutError):
                await client.models.get(MODEL_ID)


def retry_after(value: str) -> float | None:
    request = httpx.Request("GET", "http://x")
    return parse_retry_after(httpx.Response(429, headers={"Retry-After": value}, request=request))


def test_retry_after_reads_seconds_and_http_dates() -> None:
    in_ten_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    long_ago = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)

    assert retry_after("3") == 3.0
    assert retry_after("0.25") == 0.25
    assert 8.0 < (retry_after(in_ten_seconds) or 0) <= 10.0
    assert retry_after(long_ago) == 0.0
    assert retry_after("-1") is None
    assert retry_after("soon") is None


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=3.0)

    for _ in range(50):
        assert 0.75 <= policy.backoff(0) <= 1.0
        assert 1.5 <= policy.backoff(1) <= 2.0
        assert 2.25 <= policy.backoff(5) <= 3.0
