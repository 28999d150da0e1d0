"""Raw and streamed bodies through the SDK's send path, against the real server: what file
uploads and downloads will be built on (a request body sent in chunks, a response read as it comes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ckpt_registry.client import AsyncClient, Client, NotFoundError
from ckpt_registry.client._base import APIRequest, RequestContent


def raw_register(model_id: str, body: RequestContent) -> APIRequest[httpx.Response]:
    return APIRequest(
        "POST",
        f"preview/models/{model_id}/checkpoints",
        lambda response: response,
        idempotent=True,
        content=body,
        headers={"Content-Type": "application/json"},
    )


def streamed_list(model_id: str, parse: Any = None) -> APIRequest[httpx.Response]:
    return APIRequest(
        "GET",
        f"preview/models/{model_id}/checkpoints",
        parse or (lambda response: response),
        idempotent=True,
        params={"limit": 100},
        stream=True,
    )


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_json_body_sent_as_chunks_registers_a_checkpoint(client: Client, model_id: str) -> None:
    body = json.dumps({"step": 7, "metrics": {"loss": 0.25}}).encode()

    response = client._send(raw_register(model_id, chunks(body, 5)))

    assert response.status_code == 201
    latest = client.checkpoints.latest(model_id)
    assert latest is not None
    assert (latest.step, latest.metrics) == (7, {"loss": 0.25})


@pytest.mark.anyio
async def test_an_async_iterator_body_registers_a_checkpoint(
    async_client: AsyncClient, model_id: str
) -> None:
    body = json.dumps({"step": 3, "metrics": {"acc": 1}}).encode()

    async def async_chunks() -> AsyncIterator[bytes]:
        for chunk in chunks(body, 4):
            yield chunk

    response = await async_client._send(raw_register(model_id, async_chunks()))

    assert response.status_code == 201
    latest = await async_client.checkpoints.latest(model_id)
    assert latest is not None
    assert (latest.step, latest.metrics) == (3, {"acc": 1.0})


def register_many(client: Client, model_id: str, count: int) -> None:
    for step in range(count):
        client.checkpoints.register(model_id, step=step, metrics={"loss": 1 / (step + 1)})


def test_a_streamed_list_response_is_read_as_it_comes(client: Client, model_id: str) -> None:
    register_many(client, model_id, 100)

    response = client._send(streamed_list(model_id))

    # Handed back unread: the caller reads it, piece by piece.
    assert not response.is_stream_consumed and not response.is_closed
    pieces = list(response.iter_bytes(chunk_size=512))
    assert response.is_closed
    assert len(pieces) > 1
    page = json.loads(b"".join(pieces))
    assert [item["step"] for item in page["data"]] == list(range(100))


@pytest.mark.anyio
async def test_the_async_client_streams_a_response_too(
    client: Client, async_client: AsyncClient, model_id: str
) -> None:
    register_many(client, model_id, 100)

    response = await async_client._send(streamed_list(model_id))

    assert not response.is_stream_consumed
    pieces = [piece async for piece in response.aiter_bytes(chunk_size=512)]
    assert response.is_closed
    assert len(pieces) > 1
    assert len(json.loads(b"".join(pieces))["data"]) == 100


def test_a_streamed_error_is_read_for_its_detail_and_closed(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client._send(streamed_list("2f1c6f1e-0000-4000-8000-00000000dead"))

    assert caught.value.detail == "Model not found"
    assert caught.value.response.is_closed


def test_a_streamed_response_is_closed_when_parsing_it_fails(client: Client, model_id: str) -> None:
    seen: list[httpx.Response] = []

    def refuse(response: httpx.Response) -> httpx.Response:
        seen.append(response)
        raise ValueError("not what the caller expected")

    with pytest.raises(ValueError, match="not what the caller expected"):
        client._send(streamed_list(model_id, refuse))

    assert len(seen) == 1
    assert seen[0].is_closed
