"""The real client's walk: the `openai` package's own cursor pages over our list endpoint (CONTRACT §3).

OpenPipe ART's `art.serverless.client.Client` is built on `openai`'s base client and pages with its
`AsyncCursorPage`; the small clients below are built the same way, so a walk here is a walk there.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import httpx
import pytest
from openai import APIStatusError
from openai._base_client import AsyncAPIClient, SyncAPIClient, make_request_options
from openai._models import BaseModel
from openai.pagination import AsyncCursorPage, SyncCursorPage

from .helpers import register


class Checkpoint(BaseModel):
    id: str
    step: int
    metrics: dict[str, float]


class DeleteCheckpointsResponse(BaseModel):
    deleted_count: int
    not_found_steps: list[int]


def checkpoints_path(model_id: str) -> str:
    return f"/preview/models/{model_id}/checkpoints"


class RegistryClient(SyncAPIClient):
    """A test-only client in the shape of ART's: base URL ending in /v1, a Bearer key, 3 retries."""

    def __init__(self, *, api_key: str, base_url: str) -> None:
        # As a custom header: where `openai` looks for auth headers differs between its versions.
        super().__init__(
            version="test",
            base_url=base_url,
            max_retries=3,
            custom_headers={"Authorization": f"Bearer {api_key}"},
            _strict_response_validation=False,
        )

    def _make_status_error(self, err_msg: str, *, body: object, response: Any) -> APIStatusError:
        return APIStatusError(err_msg, response=response, body=body)

    def list_checkpoints(
        self, model_id: str, *, limit: int | None = None, order: str | None = None
    ) -> SyncCursorPage[Checkpoint]:
        query = {name: value for name, value in (("limit", limit), ("order", order)) if value}
        return self.get_api_list(
            checkpoints_path(model_id),
            model=Checkpoint,
            page=SyncCursorPage[Checkpoint],
            options=make_request_options(query=query),
        )

    def delete_checkpoints(self, model_id: str, steps: list[int]) -> DeleteCheckpointsResponse:
        return self.delete(
            checkpoints_path(model_id), body={"steps": steps}, cast_to=DeleteCheckpointsResponse
        )


class AsyncRegistryClient(AsyncAPIClient):
    def __init__(self, *, api_key: str, base_url: str) -> None:
        # As a custom header: where `openai` looks for auth headers differs between its versions.
        super().__init__(
            version="test",
            base_url=base_url,
            max_retries=3,
            custom_headers={"Authorization": f"Bearer {api_key}"},
            _strict_response_validation=False,
        )

    def _make_status_error(self, err_msg: str, *, body: object, response: Any) -> APIStatusError:
        return APIStatusError(err_msg, response=response, body=body)

    def list_checkpoints(
        self, model_id: str, *, limit: int, order: str
    ) -> Any:  # an AsyncPaginator: awaitable to a page, async-iterable over every item
        return self.get_api_list(
            checkpoints_path(model_id),
            model=Checkpoint,
            page=AsyncCursorPage[Checkpoint],
            options=make_request_options(query={"limit": limit, "order": order}),
        )


@pytest.fixture
def openai_client(server_url: str, api_key: str) -> Any:
    client = RegistryClient(api_key=api_key, base_url=server_url)
    yield client
    client.close()


async def async_walk(
    base_url: str, api_key: str, model_id: str, limit: int, order: str
) -> tuple[list[Checkpoint], int]:
    """Every item by the async auto-paginator, and how many pages it took."""
    client = AsyncRegistryClient(api_key=api_key, base_url=base_url)
    try:
        items = [item async for item in client.list_checkpoints(model_id, limit=limit, order=order)]
        first = await client.list_checkpoints(model_id, limit=limit, order=order)
        pages = [page async for page in first.iter_pages()]
        assert [item for page in pages for item in page.data] == items
        return items, len(pages)
    finally:
        await client.close()


# N = k*limit - 1, k*limit, k*limit + 1: the last page short by one, exactly full, and one over.
@pytest.mark.parametrize(("limit", "k"), [(1, 3), (7, 3), (20, 2), (100, 2)])
def test_openai_auto_pagination_yields_every_checkpoint_once_in_order(
    openai_client: RegistryClient,
    api: httpx.Client,
    server_url: str,
    api_key: str,
    model_id: str,
    limit: int,
    k: int,
) -> None:
    rng = random.Random(limit)
    steps = sorted(rng.sample(range(10 * (k * limit + 1)), k * limit + 1))  # gaps between steps
    first_batch = steps[: k * limit - 1]
    rng.shuffle(first_batch)  # registration order must not matter
    ids = {step: register(api, model_id, step)["id"] for step in first_batch}

    for n in (k * limit - 1, k * limit, k * limit + 1):
        for step in steps[:n]:
            if step not in ids:
                ids[step] = register(api, model_id, step)["id"]
        assert len(ids) == n
        expected_pages = math.ceil(n / limit)
        for order in ("asc", "desc"):
            expected = sorted(ids.items(), reverse=order == "desc")

            walked = list(openai_client.list_checkpoints(model_id, limit=limit, order=order))
            assert [(item.step, item.id) for item in walked] == expected, (n, order)

            page = openai_client.list_checkpoints(model_id, limit=limit, order=order)
            pages = list(page.iter_pages())
            # Exact has_more: no trailing empty request when the last page is exactly full.
            assert len(pages) == expected_pages, (n, order)
            assert all(len(p.data) == limit for p in pages[:-1])

            items, page_count = asyncio.run(async_walk(server_url, api_key, model_id, limit, order))
            assert [(item.step, item.id) for item in items] == expected, (n, order)
            assert page_count == expected_pages


def test_default_parameters_walk_ascending(
    openai_client: RegistryClient, api: httpx.Client, model_id: str
) -> None:
    ids = {step: register(api, model_id, step)["id"] for step in range(45, -1, -1)}

    first = openai_client.list_checkpoints(model_id)

    assert len(first.data) == 20
    assert [item.id for item in first] == [ids[step] for step in range(46)]


def test_art_latest_step_is_the_first_item_of_limit_one_descending(
    openai_client: RegistryClient, api: httpx.Client, model_id: str
) -> None:
    assert openai_client.list_checkpoints(model_id, limit=1, order="desc").data == []
    for step in (3, 17, 0, 9):
        register(api, model_id, step, {"reward": step / 10})

    page = openai_client.list_checkpoints(model_id, limit=1, order="desc")

    assert page.data[0].step == 17
    assert page.data[0].metrics == {"reward": 1.7}
    assert page.has_more is True


def test_art_deletes_all_but_the_kept_steps_in_one_request(
    openai_client: RegistryClient, api: httpx.Client, model_id: str
) -> None:
    for step in range(0, 50, 5):
        register(api, model_id, step)
    keep = {10, 45}

    everything = [item.step for item in openai_client.list_checkpoints(model_id, limit=3)]
    assert everything == list(range(0, 50, 5))
    # ART names steps it believes exist; some may already be gone.
    doomed = [step for step in everything if step not in keep] + [7, 1000, 7]
    result = openai_client.delete_checkpoints(model_id, doomed)

    assert result.deleted_count == len(everything) - len(keep)
    assert result.not_found_steps == [7, 1000]
    remaining = [item.step for item in openai_client.list_checkpoints(model_id, limit=1)]
    assert remaining == sorted(keep)
