"""Cursor pages walk every checkpoint exactly once, in both orders, sync and async."""

from __future__ import annotations

import pytest

from ckpt_registry.client import AsyncClient, Client, CursorPage
from ckpt_registry.client.types import Order

STEPS = list(range(0, 250, 10))  # 25 checkpoints


def register_all(client: Client, model_id: str) -> None:
    for step in STEPS:
        client.checkpoints.register(model_id, step=step, metrics={"loss": 1.0 / (step + 1)})


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 7, 25, 100])
def test_iterating_a_page_walks_every_page(
    client: Client, model_id: str, order: Order, limit: int
) -> None:
    register_all(client, model_id)
    expected = STEPS if order == "asc" else STEPS[::-1]

    page = client.checkpoints.list(model_id, order=order, limit=limit)

    assert [c.step for c in page.data] == expected[:limit]
    assert page.has_more == (limit < len(STEPS))
    assert [c.step for c in page] == expected
    assert sum(len(p.data) for p in page.iter_pages()) == len(STEPS)


def test_get_next_page_continues_after_the_last_item(client: Client, model_id: str) -> None:
    register_all(client, model_id)
    first = client.checkpoints.list(model_id, limit=10)
    assert first.has_next_page()

    second = first.get_next_page()
    third = second.get_next_page()

    assert [c.step for c in second.data] == STEPS[10:20]
    assert [c.step for c in third.data] == STEPS[20:]
    assert not third.has_next_page()
    assert third.last_id == third.data[-1].id
    with pytest.raises(RuntimeError, match="No next page"):
        third.get_next_page()


def test_an_empty_model_lists_an_empty_page(client: Client, model_id: str) -> None:
    page = client.checkpoints.list(model_id)

    assert isinstance(page, CursorPage)
    assert page.data == []
    assert not page.has_next_page()
    assert list(page) == []
    assert client.checkpoints.latest(model_id) is None


def test_latest_is_the_highest_step(client: Client, model_id: str) -> None:
    register_all(client, model_id)

    latest = client.checkpoints.latest(model_id)

    assert latest is not None
    assert latest.step == STEPS[-1]


def test_models_list_pages_through_the_entitys_models(client: Client) -> None:
    created = [
        client.models.create(project="a" if i % 2 else "b", name=f"m{i}", base_model="x").id
        for i in range(5)
    ]

    assert [m.id for m in client.models.list(limit=2)] == created
    assert [m.id for m in client.models.list(limit=2, order="desc")] == created[::-1]
    assert [m.id for m in client.models.list(project="a", limit=1)] == created[1::2]


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_async_for_walks_every_page(
    client: Client, model_id: str, async_client: AsyncClient, order: Order
) -> None:
    register_all(client, model_id)
    expected = STEPS if order == "asc" else STEPS[::-1]

    steps = [c.step async for c in async_client.checkpoints.list(model_id, order=order, limit=7)]
    first = await async_client.checkpoints.list(model_id, order=order, limit=7)
    second = await first.get_next_page()
    latest = await async_client.checkpoints.latest(model_id)
    models = [m.id async for m in async_client.models.list(limit=1)]

    assert steps == expected
    assert [c.step for c in first.data] == expected[:7]
    assert [c.step for c in second.data] == expected[7:14]
    assert latest is not None and latest.step == STEPS[-1]
    assert models == [model_id]
