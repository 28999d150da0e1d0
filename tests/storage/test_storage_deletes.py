"""The `Storage` Protocol's deletes (checkpoints by step, retention, whole models), called directly,
with the same assertions on every backend."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from ckpt_registry.contract import MAX_STEP
from ckpt_registry.storage import Storage
from ckpt_registry.storage.base import BestRule, DeleteResult, Model, RetentionResult
from ckpt_registry.storage.errors import CheckpointNotFound, ModelNotFound

from .conftest import ENTITY, OTHER_ENTITY, register_steps, walk_checkpoints

pytestmark = pytest.mark.anyio


async def live_steps(storage: Storage, model: Model) -> list[int]:
    steps, _ = await walk_checkpoints(storage, model, limit=100, order="asc")
    return steps


# Deleting checkpoints by step -------------------------------------------------------------------


async def test_deleting_steps_reports_each_unknown_step_once_in_request_order(
    storage: Storage, model: Model
) -> None:
    await register_steps(storage, model, {1: {"a": 1.0}, 2: {}, 3: {"a": 3.0}, MAX_STEP: {}})

    result = await storage.delete_checkpoints(
        ENTITY, model.id, [3, 99, 1, 3, -1, MAX_STEP + 1, 1, MAX_STEP, -(2**70), 99, 2**64]
    )

    # Steps outside 0..2^63-1 cannot have a checkpoint: reported, never sent to the database.
    assert result == DeleteResult(3, [99, -1, MAX_STEP + 1, -(2**70), 2**64])
    assert await live_steps(storage, model) == [2]
    assert await storage.delete_checkpoints(ENTITY, model.id, [3, 2]) == DeleteResult(1, [3])
    assert await storage.delete_checkpoints(ENTITY, model.id, []) == DeleteResult(0, [])
    assert await live_steps(storage, model) == []


async def test_deleting_steps_touches_only_the_named_model(storage: Storage, model: Model) -> None:
    other, _ = await storage.create_model(ENTITY, "proj", "other", "b", return_existing=False)
    await register_steps(storage, other, {1: {}, 2: {}})
    await register_steps(storage, model, {1: {}})

    assert await storage.delete_checkpoints(ENTITY, model.id, [1, 2]) == DeleteResult(1, [2])
    assert await live_steps(storage, other) == [1, 2]
    for entity, model_id in [(OTHER_ENTITY, other.id), (ENTITY, str(uuid.uuid4())), (ENTITY, "x")]:
        with pytest.raises(ModelNotFound):
            await storage.delete_checkpoints(entity, model_id, [1])
    assert await live_steps(storage, other) == [1, 2]


# Retention --------------------------------------------------------------------------------------

# Rewards by step: the best by max are 3 (0.9) and 6 (0.8); by min 4 (0.0) and 8 and 1 tie (0.1).
REWARDS = {0: 0.5, 1: 0.1, 2: 0.3, 3: 0.9, 4: 0.0, 5: 0.4, 6: 0.8, 7: 0.2, 8: 0.1, 9: 0.6}


@pytest.fixture
async def rewarded(storage: Storage, model: Model) -> dict[int, str]:
    return await register_steps(storage, model, {s: {"reward": r} for s, r in REWARDS.items()})


@pytest.mark.parametrize(
    ("keep_latest", "keep_best", "kept"),
    [
        (0, None, [9]),  # the latest is always kept
        (1, None, [9]),
        (3, None, [7, 8, 9]),
        (20, None, list(range(10))),
        (0, BestRule("reward", "max", 2), [3, 6, 9]),
        (2, BestRule("reward", "max", 2), [3, 6, 8, 9]),
        (1, BestRule("reward", "min", 2), [4, 8, 9]),  # a tie at 0.1 goes to the later step
        (1, BestRule("reward", "min", 3), [1, 4, 8, 9]),
        (1, BestRule("reward", "max", 0), [9]),
        (1, BestRule("nobody-has-it", "max", 5), [9]),
        (0, BestRule("reward", "max", 50), list(range(10))),
    ],
)
async def test_retention_keeps_the_latest_and_the_best_and_deletes_exactly_the_rest(
    storage: Storage,
    model: Model,
    rewarded: dict[int, str],
    keep_latest: int,
    keep_best: BestRule | None,
    kept: list[int],
) -> None:
    deleted = [step for step in REWARDS if step not in kept]

    plan = await storage.apply_retention(
        ENTITY, model.id, keep_latest=keep_latest, keep_best=keep_best, dry_run=True
    )
    assert plan == RetentionResult(kept, deleted)
    assert await live_steps(storage, model) == list(range(10))  # a dry run changes nothing

    done = await storage.apply_retention(
        ENTITY, model.id, keep_latest=keep_latest, keep_best=keep_best, dry_run=False
    )
    assert done == RetentionResult(kept, deleted)
    assert await live_steps(storage, model) == kept
    for step in deleted:
        with pytest.raises(CheckpointNotFound):
            await storage.get_checkpoint(ENTITY, model.id, rewarded[step])
    # The run is done: running it again deletes nothing more.
    again = await storage.apply_retention(
        ENTITY, model.id, keep_latest=keep_latest, keep_best=keep_best, dry_run=False
    )
    assert again == RetentionResult(kept, [])


async def test_retention_leaves_tombstones_that_keep_cursors_working(
    storage: Storage, model: Model, rewarded: dict[int, str]
) -> None:
    await storage.apply_retention(
        ENTITY, model.id, keep_latest=2, keep_best=BestRule("reward", "max", 1), dry_run=False
    )

    assert await walk_checkpoints(storage, model, limit=1, order="asc", after=rewarded[4]) == (
        [8, 9],
        [True, False],
    )
    assert await walk_checkpoints(storage, model, limit=5, order="desc", after=rewarded[5]) == (
        [3],
        [False],
    )


async def test_retention_of_an_empty_model_keeps_and_deletes_nothing(
    storage: Storage, model: Model
) -> None:
    for dry_run in (True, False):
        result = await storage.apply_retention(
            ENTITY, model.id, keep_latest=0, keep_best=BestRule("reward", "max", 3), dry_run=dry_run
        )
        assert result == RetentionResult([], [])


async def test_retention_of_an_unknown_or_foreign_model_is_model_not_found(
    storage: Storage, model: Model, rewarded: dict[int, str]
) -> None:
    assert rewarded
    for dry_run in (True, False):
        for entity, model_id in [(OTHER_ENTITY, model.id), (ENTITY, str(uuid.uuid4()))]:
            with pytest.raises(ModelNotFound):
                await storage.apply_retention(
                    entity, model_id, keep_latest=1, keep_best=None, dry_run=dry_run
                )
    assert await live_steps(storage, model) == list(range(10))


# Deleting a model -------------------------------------------------------------------------------


async def test_deleting_a_model_counts_its_live_checkpoints_and_hides_it_everywhere(
    storage: Storage, model: Model
) -> None:
    ids = await register_steps(storage, model, {step: {"loss": float(step)} for step in range(5)})
    await storage.delete_checkpoints(ENTITY, model.id, [0, 1])
    other, _ = await storage.create_model(ENTITY, "proj", "other", "b", return_existing=False)
    await register_steps(storage, other, {1: {"loss": 1.0}})

    assert await storage.delete_model(ENTITY, model.id) == 3

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get_model": lambda: storage.get_model(ENTITY, model.id),
        "delete_model": lambda: storage.delete_model(ENTITY, model.id),
        "list_checkpoints": lambda: storage.list_checkpoints(
            ENTITY, model.id, after=None, limit=5, order="asc"
        ),
        "list_checkpoints after": lambda: storage.list_checkpoints(
            ENTITY, model.id, after=ids[3], limit=5, order="desc"
        ),
        "register_checkpoint": lambda: storage.register_checkpoint(ENTITY, model.id, 9, {}),
        "get_checkpoint": lambda: storage.get_checkpoint(ENTITY, model.id, ids[3]),
        "update_metrics": lambda: storage.update_metrics(ENTITY, model.id, ids[3], {"a": 1.0}),
        "delete_checkpoints": lambda: storage.delete_checkpoints(ENTITY, model.id, [3]),
        "best_checkpoint": lambda: storage.best_checkpoint(ENTITY, model.id, "loss", "min"),
        "apply_retention": lambda: storage.apply_retention(
            ENTITY, model.id, keep_latest=1, keep_best=None, dry_run=False
        ),
        "apply_retention dry": lambda: storage.apply_retention(
            ENTITY, model.id, keep_latest=1, keep_best=None, dry_run=True
        ),
    }
    answered = []
    for name, call in calls.items():
        try:
            await call()
        except ModelNotFound:
            continue
        answered.append(name)
    assert answered == []
    page = await storage.list_models(ENTITY, project=None, after=None, limit=10, order="asc")
    assert [m.id for m in page.data] == [other.id]
    assert await live_steps(storage, other) == [1]
    assert (await storage.best_checkpoint(ENTITY, other.id, "loss", "min")).step == 1
    # The delete finished its own rows: nothing is left for the purge.
    assert await storage.purge_deleted_models() == 0


async def test_a_model_is_deleted_only_by_its_own_entity(storage: Storage, model: Model) -> None:
    await register_steps(storage, model, {1: {}})

    for entity, model_id in [
        (OTHER_ENTITY, model.id),
        (ENTITY, model.id.upper()),
        (ENTITY, str(uuid.uuid4())),
        (ENTITY, "not-a-uuid"),
    ]:
        with pytest.raises(ModelNotFound):
            await storage.delete_model(entity, model_id)

    assert await storage.get_model(ENTITY, model.id) == model
    assert await storage.delete_model(ENTITY, model.id) == 1


async def test_purging_deleted_models_with_nothing_pending_finishes_none(storage: Storage) -> None:
    assert await storage.purge_deleted_models() == 0
    empty, _ = await storage.create_model(ENTITY, "proj", "empty", "b", return_existing=False)

    assert await storage.delete_model(ENTITY, empty.id) == 0
    assert await storage.purge_deleted_models() == 0


# Deleted steps ---------------------------------------------------------------------------------


async def test_deleted_steps_are_tombstoned_steps_without_a_live_checkpoint(
    storage: Storage, model: Model
) -> None:
    await register_steps(storage, model, {step: {} for step in (0, 1, 2, 3, MAX_STEP)})
    await storage.delete_checkpoints(ENTITY, model.id, [0, 1, 2, MAX_STEP])
    await register_steps(storage, model, {1: {}})  # back: not deleted any more
    await storage.delete_checkpoints(ENTITY, model.id, [2])  # already gone: no second tombstone
    await register_steps(storage, model, {2: {}})
    await storage.delete_checkpoints(ENTITY, model.id, [2])  # deleted twice: listed once

    everything = await storage.list_deleted_steps(ENTITY, model.id, after_step=None, limit=10)
    first = await storage.list_deleted_steps(ENTITY, model.id, after_step=None, limit=2)
    rest = await storage.list_deleted_steps(ENTITY, model.id, after_step=2, limit=2)

    assert [d.step for d in everything.data] == [0, 2, MAX_STEP]
    assert not everything.has_more
    assert ([d.step for d in first.data], first.has_more) == ([0, 2], True)
    assert ([d.step for d in rest.data], rest.has_more) == ([MAX_STEP], False)
    # The last deletion of step 2 is the one shown, as an aware UTC datetime.
    assert everything.data[1].deleted_at > everything.data[0].deleted_at
    assert everything.data[0].deleted_at.utcoffset() is not None


async def test_deleted_steps_of_an_unknown_or_other_entitys_model_is_model_not_found(
    storage: Storage, model: Model
) -> None:
    for entity, model_id in ((OTHER_ENTITY, model.id), (ENTITY, str(uuid.uuid4()))):
        with pytest.raises(ModelNotFound):
            await storage.list_deleted_steps(entity, model_id, after_step=None, limit=10)
