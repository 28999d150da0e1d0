"""The `Storage` Protocol's checkpoints (register, list and its cursors, get, merge, best), called
directly, with the same assertions on every backend."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ckpt_registry.contract import MAX_METRICS, MAX_STEP
from ckpt_registry.storage import Storage
from ckpt_registry.storage.base import Model, Order
from ckpt_registry.storage.errors import (
    CheckpointNotFound,
    CursorExpired,
    InvalidCursor,
    MetricNotFound,
    ModelNotFound,
    StepConflict,
    TooManyMetrics,
)

from .conftest import ENTITY, OTHER_ENTITY, is_utc, register_steps, walk_checkpoints

pytestmark = pytest.mark.anyio

# Registered out of step order, so a list in step order is the backend's doing.
STEPS = [5, 0, 8, 3, 1, 7, 2, 6, 4]


# Registration -----------------------------------------------------------------------------------


async def test_registering_a_step_creates_a_checkpoint(storage: Storage, model: Model) -> None:
    checkpoint, created = await storage.register_checkpoint(
        ENTITY, model.id, 10, {"loss": 0.5, "acc": 0.25}
    )

    assert created
    assert (checkpoint.step, checkpoint.metrics_json) == (10, '{"loss":0.5,"acc":0.25}')
    assert str(uuid.UUID(checkpoint.id)) == checkpoint.id
    assert is_utc(checkpoint.created_at) and checkpoint.updated_at == checkpoint.created_at
    assert await storage.get_checkpoint(ENTITY, model.id, checkpoint.id) == checkpoint


async def test_the_largest_step_and_no_metrics_can_be_registered(
    storage: Storage, model: Model
) -> None:
    checkpoint, created = await storage.register_checkpoint(ENTITY, model.id, MAX_STEP, {})

    assert created and (checkpoint.step, checkpoint.metrics_json) == (MAX_STEP, "{}")
    page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=5, order="desc")
    assert page.data == [(checkpoint.id, MAX_STEP, "{}")]


async def test_registering_a_step_again_with_equal_metrics_answers_the_existing_one(
    storage: Storage, model: Model
) -> None:
    first, _ = await storage.register_checkpoint(ENTITY, model.id, 3, {"loss": 1, "acc": 2.5})

    # 1 and 1.0 are one value, and the order of the names does not matter.
    again = await storage.register_checkpoint(ENTITY, model.id, 3, {"acc": 2.5, "loss": 1.0})

    assert again == (first, False)
    page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=5, order="asc")
    assert page.data == [(first.id, 3, '{"loss":1,"acc":2.5}')]


@pytest.mark.parametrize(
    "metrics", [{"loss": 1.5}, {"loss": 1}, {"loss": 1.0, "acc": 2.5, "f1": 0}, {}]
)
async def test_registering_a_step_again_with_other_metrics_is_a_conflict(
    storage: Storage, model: Model, metrics: dict[str, float]
) -> None:
    first, _ = await storage.register_checkpoint(ENTITY, model.id, 12, {"loss": 1.0, "acc": 2.5})

    with pytest.raises(StepConflict) as caught:
        await storage.register_checkpoint(ENTITY, model.id, 12, metrics)

    assert caught.value.message == "Step 12 already has a checkpoint with different metrics"
    assert await storage.get_checkpoint(ENTITY, model.id, first.id) == first


async def test_a_deleted_step_can_be_registered_again_as_a_new_checkpoint(
    storage: Storage, model: Model
) -> None:
    first, _ = await storage.register_checkpoint(ENTITY, model.id, 4, {"loss": 1.0})
    await storage.delete_checkpoints(ENTITY, model.id, [4])

    second, created = await storage.register_checkpoint(ENTITY, model.id, 4, {"loss": 2.0})

    assert created and second.id != first.id and second.metrics_json == '{"loss":2.0}'


async def test_a_checkpoint_is_found_by_its_step_while_it_lives(
    storage: Storage, model: Model
) -> None:
    await register_steps(storage, model, {step: {"loss": step / 10} for step in STEPS})
    at_three = await storage.get_checkpoint_at_step(ENTITY, model.id, 3)
    assert at_three.step == 3
    assert at_three == await storage.get_checkpoint(ENTITY, model.id, at_three.id)

    await storage.delete_checkpoints(ENTITY, model.id, [3])
    for step in (3, 9, MAX_STEP):
        with pytest.raises(CheckpointNotFound):
            await storage.get_checkpoint_at_step(ENTITY, model.id, step)
    for entity, model_id in [(OTHER_ENTITY, model.id), (ENTITY, str(uuid.uuid4())), (ENTITY, "x")]:
        with pytest.raises(ModelNotFound):
            await storage.get_checkpoint_at_step(entity, model_id, 4)


async def test_checkpoints_of_an_unknown_or_foreign_model_cannot_be_registered(
    storage: Storage, model: Model
) -> None:
    for entity, model_id in [(OTHER_ENTITY, model.id), (ENTITY, str(uuid.uuid4())), (ENTITY, "x")]:
        with pytest.raises(ModelNotFound):
            await storage.register_checkpoint(entity, model_id, 1, {"loss": 1.0})

    page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=5, order="asc")
    assert (page.data, page.has_more) == ([], False)


# Listing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_checkpoints_are_paged_by_step_with_exact_has_more(
    storage: Storage, model: Model, order: Order
) -> None:
    ids = await register_steps(storage, model, {step: {"loss": step / 10} for step in STEPS})
    other, _ = await storage.create_model(ENTITY, "proj", "other", "b", return_existing=False)
    await register_steps(storage, other, {step: {} for step in range(20, 25)})
    expected = sorted(STEPS, reverse=order == "desc")

    # 9 checkpoints: pages of 3 end on a full page, which must still say has_more false.
    for limit, flags in [
        (1, [True] * 8 + [False]),
        (2, [True] * 4 + [False]),
        (3, [True, True, False]),
        (8, [True, False]),
        (9, [False]),
        (100, [False]),
    ]:
        assert await walk_checkpoints(storage, model, limit=limit, order=order) == (
            expected,
            flags,
        )
    page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=2, order=order)
    assert page.data == [(ids[step], step, f'{{"loss":{step / 10}}}') for step in expected[:2]]


async def test_an_empty_model_lists_an_empty_last_page(storage: Storage, model: Model) -> None:
    for order in ("asc", "desc"):
        page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=5, order=order)
        assert (page.data, page.has_more) == ([], False)


async def test_the_last_checkpoints_cursor_gives_an_empty_last_page(
    storage: Storage, model: Model
) -> None:
    ids = await register_steps(storage, model, {step: {} for step in range(3)})

    after_last = await storage.list_checkpoints(
        ENTITY, model.id, after=ids[2], limit=5, order="asc"
    )
    before_first = await storage.list_checkpoints(
        ENTITY, model.id, after=ids[0], limit=5, order="desc"
    )

    assert (after_last.data, after_last.has_more) == ([], False)
    assert (before_first.data, before_first.has_more) == ([], False)


async def test_a_cursor_naming_a_deleted_checkpoint_continues_from_its_step(
    storage: Storage, model: Model
) -> None:
    ids = await register_steps(storage, model, {step: {} for step in STEPS})
    await storage.delete_checkpoints(ENTITY, model.id, [4, 5])

    assert await walk_checkpoints(storage, model, limit=2, order="asc", after=ids[4]) == (
        [6, 7, 8],
        [True, False],
    )
    assert await walk_checkpoints(storage, model, limit=2, order="desc", after=ids[4]) == (
        [3, 2, 1, 0],
        [True, False],
    )
    assert await walk_checkpoints(storage, model, limit=10, order="desc", after=ids[5]) == (
        [3, 2, 1, 0],
        [False],
    )


async def test_a_walk_survives_the_deletion_of_its_cursor_between_pages(
    storage: Storage, model: Model
) -> None:
    await register_steps(storage, model, {step: {} for step in range(6)})
    page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=2, order="asc")
    cursor = page.data[-1][0]

    await storage.delete_checkpoints(ENTITY, model.id, [1, 2])

    assert await walk_checkpoints(storage, model, limit=2, order="asc", after=cursor) == (
        [3, 4, 5],
        [True, False],
    )


async def test_a_checkpoint_cursor_must_belong_to_the_listed_model(
    storage: Storage, model: Model
) -> None:
    other, _ = await storage.create_model(ENTITY, "proj", "other", "b", return_existing=False)
    other_ids = await register_steps(storage, other, {1: {}, 2: {}})
    ids = await register_steps(storage, model, {1: {}, 2: {}})
    await storage.delete_checkpoints(ENTITY, other.id, [2])  # a tombstone of the other model

    for after in [
        other_ids[1],
        other_ids[2],
        other.id,
        model.id,
        str(uuid.uuid4()),
        ids[1].upper(),
        "not-a-uuid",
        "",
    ]:
        for order in ("asc", "desc"):
            with pytest.raises(InvalidCursor) as caught:
                await storage.list_checkpoints(ENTITY, model.id, after=after, limit=5, order=order)
            assert caught.type is InvalidCursor
            assert caught.value.message == "after is not the id of a checkpoint of this model"


async def test_a_purged_tombstones_cursor_has_expired(storage: Storage, model: Model) -> None:
    ids = await register_steps(storage, model, {step: {} for step in range(4)})
    other, _ = await storage.create_model(ENTITY, "proj", "other", "b", return_existing=False)
    other_ids = await register_steps(storage, other, {0: {}, 1: {}})
    await storage.delete_checkpoints(ENTITY, model.id, [1, 2])
    await storage.delete_checkpoints(ENTITY, other.id, [0])

    # Tombstones newer than the cutoff are kept, and their cursors keep working.
    assert await storage.purge_tombstones(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await walk_checkpoints(storage, model, limit=5, order="asc", after=ids[1]) == (
        [3],
        [False],
    )
    assert await storage.purge_tombstones(datetime.now(UTC) + timedelta(hours=1)) == 3
    assert await storage.purge_tombstones(datetime.now(UTC) + timedelta(hours=1)) == 0

    for after in (ids[1], ids[2]):
        for order in ("asc", "desc"):
            with pytest.raises(CursorExpired) as caught:
                await storage.list_checkpoints(ENTITY, model.id, after=after, limit=5, order=order)
            assert caught.value.message.startswith("after names a checkpoint deleted so long ago")
    # Another model's expired cursor is no cursor of this model at all.
    with pytest.raises(InvalidCursor) as foreign:
        await storage.list_checkpoints(ENTITY, model.id, after=other_ids[0], limit=5, order="asc")
    assert foreign.type is InvalidCursor
    # Live checkpoints are untouched and their cursors still work.
    assert await walk_checkpoints(storage, model, limit=5, order="desc", after=ids[3]) == (
        [0],
        [False],
    )


async def test_listing_an_unknown_or_foreign_model_is_model_not_found(
    storage: Storage, model: Model
) -> None:
    ids = await register_steps(storage, model, {1: {}})

    for entity, model_id, after in [
        (OTHER_ENTITY, model.id, None),
        (OTHER_ENTITY, model.id, ids[1]),
        (ENTITY, str(uuid.uuid4()), None),
        (ENTITY, model.id.upper(), None),
        (ENTITY, "not-a-uuid", ids[1]),
    ]:
        with pytest.raises(ModelNotFound):
            await storage.list_checkpoints(entity, model_id, after=after, limit=5, order="asc")


# Reading one, merging metrics -------------------------------------------------------------------


async def test_a_checkpoint_is_found_only_in_its_own_live_model(
    storage: Storage, model: Model
) -> None:
    ids = await register_steps(storage, model, {1: {"loss": 1.0}, 2: {}})
    other, _ = await storage.create_model(ENTITY, "proj", "other", "b", return_existing=False)
    other_ids = await register_steps(storage, other, {1: {}})
    await storage.delete_checkpoints(ENTITY, model.id, [2])

    assert (await storage.get_checkpoint(ENTITY, model.id, ids[1])).metrics_json == '{"loss":1.0}'
    for checkpoint_id in [ids[2], other_ids[1], ids[1].upper(), str(uuid.uuid4()), "x", ""]:
        with pytest.raises(CheckpointNotFound) as caught:
            await storage.get_checkpoint(ENTITY, model.id, checkpoint_id)
        assert caught.value.message == "Checkpoint not found"
    with pytest.raises(CheckpointNotFound):
        await storage.get_checkpoint(ENTITY, other.id, ids[1])
    with pytest.raises(ModelNotFound):
        await storage.get_checkpoint(OTHER_ENTITY, model.id, ids[1])


async def test_update_metrics_merges_names_in_and_overwrites_values(
    storage: Storage, model: Model
) -> None:
    first, _ = await storage.register_checkpoint(ENTITY, model.id, 7, {"loss": 1.0, "acc": 0.5})

    updated = await storage.update_metrics(ENTITY, model.id, first.id, {"acc": 0.75, "bleu": 30})

    assert (updated.id, updated.step, updated.created_at) == (first.id, 7, first.created_at)
    assert updated.metrics_json == '{"loss":1.0,"acc":0.75,"bleu":30}'
    assert is_utc(updated.updated_at) and updated.updated_at >= first.updated_at
    assert await storage.get_checkpoint(ENTITY, model.id, first.id) == updated
    page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=5, order="asc")
    assert page.data == [(first.id, 7, updated.metrics_json)]
    # The merged values are what best ranks by, new names included.
    await storage.register_checkpoint(ENTITY, model.id, 8, {"acc": 0.6, "bleu": 20})
    assert (await storage.best_checkpoint(ENTITY, model.id, "acc", "max")).step == 7
    assert (await storage.best_checkpoint(ENTITY, model.id, "bleu", "max")).step == 7
    # Registering step 7 again is a retry only with the merged metrics.
    assert await storage.register_checkpoint(
        ENTITY, model.id, 7, {"loss": 1, "acc": 0.75, "bleu": 30}
    ) == (updated, False)


async def test_update_metrics_needs_a_live_checkpoint_of_a_live_model(
    storage: Storage, model: Model
) -> None:
    ids = await register_steps(storage, model, {1: {}, 2: {}})
    await storage.delete_checkpoints(ENTITY, model.id, [2])

    for checkpoint_id in [ids[2], str(uuid.uuid4()), "x"]:
        with pytest.raises(CheckpointNotFound):
            await storage.update_metrics(ENTITY, model.id, checkpoint_id, {"acc": 1.0})
    with pytest.raises(ModelNotFound):
        await storage.update_metrics(OTHER_ENTITY, model.id, ids[1], {"acc": 1.0})
    assert (await storage.get_checkpoint(ENTITY, model.id, ids[1])).metrics_json == "{}"


async def test_a_merge_over_the_metric_limit_is_refused_and_changes_nothing(
    storage: Storage, model: Model
) -> None:
    metrics = {f"m{index}": float(index) for index in range(MAX_METRICS - 1)}
    first, _ = await storage.register_checkpoint(ENTITY, model.id, 1, metrics)
    full = await storage.update_metrics(ENTITY, model.id, first.id, {"last": 1.0})
    assert len(orjson.loads(full.metrics_json)) == MAX_METRICS

    with pytest.raises(TooManyMetrics) as caught:
        await storage.update_metrics(ENTITY, model.id, first.id, {"m0": -1.0, "one-more": 1.0})

    assert caught.value.message == (
        f"the merge would leave the checkpoint with {MAX_METRICS + 1} metrics; "
        f"at most {MAX_METRICS} are allowed"
    )
    assert await storage.get_checkpoint(ENTITY, model.id, first.id) == full
    with pytest.raises(MetricNotFound):
        await storage.best_checkpoint(ENTITY, model.id, "one-more", "max")
    # Overwriting names it already has stays within the limit.
    overwritten = await storage.update_metrics(ENTITY, model.id, first.id, {"m0": -1.0})
    assert orjson.loads(overwritten.metrics_json)["m0"] == -1.0


# Best -------------------------------------------------------------------------------------------


async def test_best_ranks_by_one_metric_and_ties_go_to_the_later_step(
    storage: Storage, model: Model
) -> None:
    await register_steps(
        storage,
        model,
        {
            3: {"acc": 0.9, "loss": 0.2},
            1: {"acc": 0.5, "loss": -1.5},
            4: {"acc": 0.1, "loss": 0.3},
            2: {"acc": 0.9, "loss": -1.5},
            0: {"acc": 0.1},
            5: {"loss": 7.0},  # no acc: never best by acc
        },
    )

    best = {
        (metric, mode): (await storage.best_checkpoint(ENTITY, model.id, metric, mode)).step
        for metric in ("acc", "loss")
        for mode in ("max", "min")
    }

    assert best == {("acc", "max"): 3, ("acc", "min"): 4, ("loss", "max"): 5, ("loss", "min"): 2}
    winner = await storage.best_checkpoint(ENTITY, model.id, "acc", "max")
    assert winner.metrics_json == '{"acc":0.9,"loss":0.2}'


async def test_best_forgets_deleted_checkpoints(storage: Storage, model: Model) -> None:
    await register_steps(storage, model, {1: {"acc": 0.5}, 2: {"acc": 0.9}, 3: {"f1": 1.0}})

    await storage.delete_checkpoints(ENTITY, model.id, [2, 3])

    assert (await storage.best_checkpoint(ENTITY, model.id, "acc", "max")).step == 1
    with pytest.raises(MetricNotFound):
        await storage.best_checkpoint(ENTITY, model.id, "f1", "max")


async def test_best_of_a_metric_no_checkpoint_has_is_metric_not_found(
    storage: Storage, model: Model
) -> None:
    other, _ = await storage.create_model(ENTITY, "proj", "other", "b", return_existing=False)
    await register_steps(storage, other, {1: {"bleu": 1.0}})
    await register_steps(storage, model, {1: {"acc": 1.0}})

    for mode in ("max", "min"):
        with pytest.raises(MetricNotFound) as caught:
            await storage.best_checkpoint(ENTITY, model.id, "bleu", mode)
        assert caught.value.message == "No checkpoint of this model has the metric 'bleu'"
    with pytest.raises(ModelNotFound):
        await storage.best_checkpoint(OTHER_ENTITY, model.id, "acc", "max")
