"""Fixtures for the SDK tests: clients of the real server that tests/conftest.py starts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ckpt_registry.client import AsyncClient, Client, RetryPolicy


@pytest.fixture
def fast_retries() -> RetryPolicy:
    """Retries that wait milliseconds, not seconds."""
    return RetryPolicy(initial_delay=0.01, max_delay=0.05, max_total=5.0)


@pytest.fixture
def client(server_url: str, api_key: str, fast_retries: RetryPolicy) -> Iterator[Client]:
    with Client(api_key=api_key, base_url=server_url, retry_policy=fast_retries) as client:
        yield client


@pytest.fixture
async def async_client(
    server_url: str, api_key: str, fast_retries: RetryPolicy
) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        api_key=api_key, base_url=server_url, retry_policy=fast_retries
    ) as client:
        yield client


@pytest.fixture
def model_id(client: Client) -> str:
    return client.models.create(project="sdk", name="m", base_model="base").id
