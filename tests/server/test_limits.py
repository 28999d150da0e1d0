"""Limits answered early: a request's head (headers, URL, query parameters) before anything reads it,
and a body over its limit before it is read whole."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from ckpt_registry.contract import MAX_JSON_BODY_BYTES
from ckpt_registry.server.headlimits import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_QUERY_PARAMETERS,
    MAX_URL_BYTES,
)
from tests.conftest import RunningServer

from .helpers import assert_detail, list_page, snapshot


def test_too_many_headers_is_431_and_changes_nothing(api: httpx.Client, model_id: str) -> None:
    before = snapshot(api)
    headers = {f"x-h{i}": "1" for i in range(MAX_HEADERS)}

    response = api.post(
        f"/preview/models/{model_id}/checkpoints", json={"step": 1}, headers=headers
    )

    assert_detail(response, 431, f"Too many request headers: at most {MAX_HEADERS}")
    assert "x-request-id" in response.headers
    assert snapshot(api) == before
    # A few headers fewer (httpx adds its own) is served.
    fewer = {f"x-h{i}": "1" for i in range(MAX_HEADERS - 10)}
    assert api.get("/preview/models", headers=fewer).status_code == 200


def test_headers_too_large_are_431(api: httpx.Client) -> None:
    response = api.get("/preview/models", headers={"x-big": "a" * MAX_HEADER_BYTES})
    assert_detail(response, 431)
    assert api.get("/preview/models", headers={"x-big": "a" * 4096}).status_code == 200


@pytest.mark.parametrize("where", ["path", "query"])
def test_a_url_too_long_is_414(api: httpx.Client, model_id: str, where: str) -> None:
    if where == "path":
        response = api.get(f"/preview/models/{'a' * MAX_URL_BYTES}")
    else:
        response = api.get(f"/preview/models/{model_id}/checkpoints?after={'a' * MAX_URL_BYTES}")
    assert_detail(response, 414)


def test_too_many_query_parameters_is_400(api: httpx.Client, model_id: str) -> None:
    url = f"/preview/models/{model_id}/checkpoints?"
    refused = api.get(url + "&".join(f"x{i}=1" for i in range(MAX_QUERY_PARAMETERS + 1)))
    assert_detail(refused, 400, f"Too many query parameters: at most {MAX_QUERY_PARAMETERS}")
    served = api.get(url + "&".join(f"x{i}=1" for i in range(MAX_QUERY_PARAMETERS - 1)))
    assert served.status_code == 200, served.text
    assert list_page(api, model_id)["data"] == []


def test_a_huge_streamed_body_is_refused_long_before_it_ends(
    server: RunningServer, api_key: str, model_id: str
) -> None:
    """1 GiB, chunked, to a JSON route: the 413 arrives once the limit is passed, not at the end."""
    url = urlsplit(server.url)
    chunk = b"0" * (256 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/preview/models/{model_id}/checkpoints HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        started = time.monotonic()
        sock.setblocking(False)
        while sent < 1024**3 and not answer:
            try:
                answer = sock.recv(65536)
                break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(framed)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(10)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    seconds = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # What was sent before the answer came: the limit, plus what the socket buffers held.
    assert sent < MAX_JSON_BODY_BYTES + 64 * 1024**2, sent
    assert seconds < 10
