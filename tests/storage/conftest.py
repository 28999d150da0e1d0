"""The `Storage` suite's fixtures: an opened backend over every database the tests run on, a model,
and helpers that walk a list page by page, so each test states one behaviour for both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from ckpt_registry.storage import Storage, open_storage
from ckpt_registry.storage.base import Model, Order

ENTITY = "alice"
OTHER_ENTITY = "bob"


@pytest.fixture
async def storage(database_url: str, anyio_backend: str) -> AsyncIterator[Storage]:
    assert (
        anyio_backend == "asyncio"
    )  # both backends run on asyncio (the SQLite writer and asyncpg)
    opened = open_storage(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def model(storage: Storage) -> Model:
    created, _ = await storage.create_model(ENTITY, "proj", "model", "base", return_existing=False)
    return created


async def register_steps(
    storage: Storage, model: Model, metrics_by_step: dict[int, dict[str, float]]
) -> dict[int, str]:
    """Register each step with its metrics, in the dict's order; the id of each step."""
    ids = {}
    for step, metrics in metrics_by_step.items():
        checkpoint, created = await storage.register_checkpoint(ENTITY, model.id, step, metrics)
        assert created
        ids[step] = checkpoint.id
    return ids


async def walk_checkpoints(
    storage: Storage, model: Model, *, limit: int, order: Order, after: str | None = None
) -> tuple[list[int], list[bool]]:
    """Every step from `after` on, page by page as a client follows cursors; each page's has_more."""
    steps: list[int] = []
    flags: list[bool] = []
    while True:
        page = await storage.list_checkpoints(
            ENTITY, model.id, after=after, limit=limit, order=order
        )
        assert len(page.data) <= limit
        steps += [step for _, step, _ in page.data]
        flags.append(page.has_more)
        if not page.has_more:
            return steps, flags
        after = page.data[-1][0]


async def walk_models(
    storage: Storage, entity: str, *, project: str | None, limit: int, order: Order
) -> tuple[list[Model], list[bool]]:
    """Every model of the list, page by page; each page's has_more."""
    models: list[Model] = []
    flags: list[bool] = []
    after = None
    while True:
        page = await storage.list_models(
            entity, project=project, after=after, limit=limit, order=order
        )
        assert len(page.data) <= limit
        models += page.data
        flags.append(page.has_more)
        if not page.has_more:
            return models, flags
        after = page.data[-1].id


def is_utc(moment: object) -> bool:
    """Whether a record's timestamp is an aware datetime in UTC, as base.py promises."""
    return isinstance(moment, datetime) and moment.utcoffset() == timedelta(0)
