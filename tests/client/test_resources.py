"""Each SDK method against the real server: what it sends is what the server does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ckpt_registry.client import (
    AsyncClient,
    Client,
    ConflictError,
    NotFoundError,
    RegisteredCheckpoint,
)


def test_models_create_get_and_delete(client: Client) -> None:
    model = client.models.create(project="p", name="n", base_model="Qwen/Qwen2.5-0.5B")
    client.checkpoints.register(model.id, step=1)
    client.checkpoints.register(model.id, step=2)

    assert client.models.get(model.id) == model
    assert (model.entity, model.project, model.name, model.run_id) == ("default", "p", "n", None)
    deleted = client.models.delete(model.id)
    assert (deleted.model_id, deleted.deleted_checkpoints, deleted.deleted_run) == (
        model.id,
        2,
        False,
    )
    with pytest.raises(NotFoundError):
        client.models.get(model.id)


def test_return_existing_hands_back_the_same_model(client: Client) -> None:
    first = client.models.create(project="p", name="n", base_model="b")

    again = client.models.create(project="p", name="n", base_model="other", return_existing=True)

    assert again == first
    with pytest.raises(ConflictError):
        client.models.create(project="p", name="n", base_model="b")


def test_register_is_idempotent_and_reports_whether_it_created(
    client: Client, model_id: str
) -> None:
    first = client.checkpoints.register(model_id, step=5, metrics={"loss": 1, "acc": 0.5})
    again = client.checkpoints.register(model_id, step=5, metrics={"loss": 1.0, "acc": 0.5})

    assert isinstance(first, RegisteredCheckpoint)
    assert first.created and not again.created
    assert again.id == first.id
    assert first.metrics == {"loss": 1.0, "acc": 0.5}
    assert all(isinstance(v, float) for v in first.metrics.values())


def test_timestamps_are_aware_utc_datetimes(client: Client, model_id: str) -> None:
    checkpoint = client.checkpoints.register(model_id, step=1)

    fetched = client.checkpoints.get(model_id, checkpoint.id)

    assert fetched.created_at.tzinfo is not None
    assert fetched.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - fetched.created_at) < timedelta(minutes=5)
    assert fetched.updated_at >= fetched.created_at


def test_update_metrics_merges(client: Client, model_id: str) -> None:
    checkpoint = client.checkpoints.register(model_id, step=1, metrics={"loss": 1.0, "acc": 0.1})

    updated = client.checkpoints.update_metrics(model_id, checkpoint.id, {"acc": 0.9, "eval": 2})

    assert updated.metrics == {"loss": 1.0, "acc": 0.9, "eval": 2.0}
    assert client.checkpoints.get(model_id, checkpoint.id).metrics == updated.metrics


def test_delete_reports_steps_it_did_not_find(client: Client, model_id: str) -> None:
    for step in (1, 2, 3):
        client.checkpoints.register(model_id, step=step)

    result = client.checkpoints.delete(model_id, steps=[1, 3, 7, 3])

    assert result.deleted_count == 2
    assert result.not_found_steps == [7]
    assert [c.step for c in client.checkpoints.list(model_id)] == [2]


def test_best_picks_by_mode_and_ties_go_to_the_later_step(client: Client, model_id: str) -> None:
    for step, reward in [(1, 0.2), (2, 0.9), (3, 0.9), (4, 0.1)]:
        client.checkpoints.register(model_id, step=step, metrics={"val/reward": reward})
    client.checkpoints.register(model_id, step=5, metrics={"loss": 0.0})

    assert client.checkpoints.best(model_id, metric="val/reward").step == 3
    assert client.checkpoints.best(model_id, metric="val/reward", mode="min").step == 4


def test_retention_dry_run_then_for_real(client: Client, model_id: str) -> None:
    for step, reward in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.2), (5, 0.3)]:
        client.checkpoints.register(model_id, step=step, metrics={"reward": reward})

    plan = client.checkpoints.retention(
        model_id, keep_latest=1, keep_best=("reward", "max", 2), dry_run=True
    )
    done = client.checkpoints.retention(model_id, keep_latest=1, keep_best=("reward", "max", 2))

    assert (plan.dry_run, plan.kept_steps, plan.deleted_steps) == (True, [1, 3, 5], [2, 4])
    assert (done.dry_run, done.kept_steps, done.deleted_steps) == (False, [1, 3, 5], [2, 4])
    assert [c.step for c in client.checkpoints.list(model_id)] == [1, 3, 5]


def test_metric_names_walks_every_page_in_byte_order(client: Client, model_id: str) -> None:
    client.checkpoints.register(model_id, step=1, metrics={"eval/acc": 0.5, "loss": 2.0})
    for step in range(2, 6):
        client.checkpoints.register(model_id, step=step, metrics={"loss": 1.0, "Reward": 0.1})

    everything = ["Reward", "eval/acc", "loss"]
    assert list(client.checkpoints.metric_names(model_id)) == everything
    assert list(client.checkpoints.metric_names(model_id, page_size=1)) == everything
    assert list(client.checkpoints.metric_names(model_id, after="Reward")) == everything[1:]


@pytest.mark.anyio
async def test_the_async_client_walks_metric_names(async_client: AsyncClient) -> None:
    model = await async_client.models.create(project="p", name="names", base_model="b")
    await async_client.checkpoints.register(model.id, step=1, metrics={"b": 1, "a": 2, "c": 3})

    names = [name async for name in async_client.checkpoints.metric_names(model.id, page_size=2)]

    assert names == ["a", "b", "c"]


@pytest.mark.anyio
async def test_the_async_client_has_the_same_methods(async_client: AsyncClient) -> None:
    model = await async_client.models.create(project="p", name="async", base_model="b")
    registered = await async_client.checkpoints.register(model.id, step=1, metrics={"loss": 2})
    await async_client.checkpoints.register(model.id, step=2, metrics={"loss": 1})
    updated = await async_client.checkpoints.update_metrics(model.id, registered.id, {"acc": 1})
    best = await async_client.checkpoints.best(model.id, metric="loss", mode="min")
    fetched = await async_client.checkpoints.get(model.id, registered.id)
    deleted = await async_client.checkpoints.delete(model.id, steps=[1])
    model_deleted = await async_client.models.delete(model.id)

    assert updated.metrics == {"loss": 2.0, "acc": 1.0}
    assert fetched.metrics == updated.metrics
    assert best.step == 2
    assert deleted.deleted_count == 1
    assert model_deleted.deleted_checkpoints == 1


@pytest.mark.anyio
async def test_the_async_lists_latest_and_retention(async_client: AsyncClient) -> None:
    model = await async_client.models.create(project="p", name="async", base_model="b")
    for step, reward in [(1, 0.9), (2, 0.1), (3, 0.5)]:
        await async_client.checkpoints.register(model.id, step=step, metrics={"reward": reward})

    first_page = await async_client.checkpoints.list(model.id, limit=2)
    walked = [c.step async for c in async_client.checkpoints.list(model.id, limit=2)]
    latest = await async_client.checkpoints.latest(model.id)
    retention = await async_client.checkpoints.retention(
        model.id, keep_latest=1, keep_best=("reward", "max", 1)
    )

    assert [c.step for c in first_page.data] == [1, 2] and first_page.has_more
    assert walked == [1, 2, 3]
    assert latest is not None and latest.step == 3
    assert (retention.kept_steps, retention.deleted_steps) == ([1, 3], [2])
    assert await async_client.models.get(model.id) == model
    assert [m.id async for m in async_client.models.list(project="p")] == [model.id]
