"""Text no backend can store (NUL, a lone surrogate): every write of it is refused with
`UnstorableText`, and every lookup by it finds nothing, on every backend alike (storage/rules.py)."""

from __future__ import annotations

import pytest

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import Storage
from ckpt_registry.storage.base import BestRule, Caller, Model, RetentionResult
from ckpt_registry.storage.errors import (
    CheckpointNotFound,
    InvalidCursor,
    KeyNotFound,
    MetricNotFound,
    ModelNotFound,
    StorageError,
    UnstorableText,
)

from .conftest import ENTITY, register_steps

pytestmark = pytest.mark.anyio

UNSTORABLE = ["nul\x00inside", "lone\ud800surrogate", "\x00", "\udfff"]


@pytest.fixture(params=UNSTORABLE, ids=["nul", "surrogate", "only-nul", "only-surrogate"])
def bad(request: pytest.FixtureRequest) -> str:
    text: str = request.param
    return text


def assert_unstorable(caught: pytest.ExceptionInfo[UnstorableText]) -> None:
    assert isinstance(caught.value, StorageError)
    assert caught.value.message == "text must not contain NUL characters or lone surrogates"


# Writes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["entity", "project", "name", "base_model"])
async def test_a_model_with_unstorable_text_is_refused(
    storage: Storage, bad: str, field: str
) -> None:
    texts = {"entity": ENTITY, "project": "proj", "name": "model", "base_model": "base"}
    texts[field] = bad

    for return_existing in (False, True):
        with pytest.raises(UnstorableText) as caught:
            await storage.create_model(
                texts["entity"],
                texts["project"],
                texts["name"],
                texts["base_model"],
                return_existing=return_existing,
            )
        assert_unstorable(caught)
    page = await storage.list_models(ENTITY, project=None, after=None, limit=5, order="asc")
    assert page.data == []


async def test_a_checkpoint_with_an_unstorable_metric_name_is_refused(
    storage: Storage, model: Model, bad: str
) -> None:
    with pytest.raises(UnstorableText) as caught:
        await storage.register_checkpoint(ENTITY, model.id, 1, {"loss": 1.0, bad: 2.0})

    assert_unstorable(caught)
    page = await storage.list_checkpoints(ENTITY, model.id, after=None, limit=5, order="asc")
    assert (page.data, page.has_more) == ([], False)


async def test_a_merge_with_an_unstorable_metric_name_is_refused(
    storage: Storage, model: Model, bad: str
) -> None:
    first, _ = await storage.register_checkpoint(ENTITY, model.id, 1, {"loss": 1.0})

    with pytest.raises(UnstorableText) as caught:
        await storage.update_metrics(ENTITY, model.id, first.id, {"acc": 0.5, bad: 2.0})

    assert_unstorable(caught)
    assert await storage.get_checkpoint(ENTITY, model.id, first.id) == first


@pytest.mark.parametrize("field", ["entity", "name"])
async def test_a_key_with_unstorable_text_is_refused(
    storage: Storage, bad: str, field: str
) -> None:
    texts = {"entity": ENTITY, "name": "laptop"}
    texts[field] = bad

    with pytest.raises(UnstorableText) as caught:
        await storage.create_key(texts["entity"], texts["name"], hash_key(generate_key()))

    assert_unstorable(caught)
    assert (await storage.list_keys(), await storage.count_keys()) == ([], 0)


# Lookups ----------------------------------------------------------------------------------------


async def test_no_model_is_found_by_unstorable_text(
    storage: Storage, model: Model, bad: str
) -> None:
    ids = await register_steps(storage, model, {1: {"loss": 1.0}})

    for entity, model_id in [(bad, model.id), (ENTITY, bad), (ENTITY, model.id + bad)]:
        with pytest.raises(ModelNotFound):
            await storage.get_model(entity, model_id)
        with pytest.raises(ModelNotFound):
            await storage.list_checkpoints(entity, model_id, after=None, limit=5, order="asc")
        with pytest.raises(ModelNotFound):
            await storage.list_checkpoints(entity, model_id, after=ids[1], limit=5, order="desc")
        with pytest.raises(ModelNotFound):
            await storage.get_checkpoint(entity, model_id, ids[1])
        with pytest.raises(ModelNotFound):
            await storage.best_checkpoint(entity, model_id, "loss", "max")
        with pytest.raises(ModelNotFound):
            await storage.register_checkpoint(entity, model_id, 2, {"loss": 1.0})
        with pytest.raises(ModelNotFound):
            await storage.update_metrics(entity, model_id, ids[1], {"loss": 2.0})
        with pytest.raises(ModelNotFound):
            await storage.delete_checkpoints(entity, model_id, [1])
        for dry_run in (True, False):
            with pytest.raises(ModelNotFound):
                await storage.apply_retention(
                    entity, model_id, keep_latest=0, keep_best=None, dry_run=dry_run
                )
        with pytest.raises(ModelNotFound):
            await storage.delete_model(entity, model_id)
    assert await storage.get_model(ENTITY, model.id) == model
    assert (await storage.get_checkpoint(ENTITY, model.id, ids[1])).step == 1


async def test_a_model_list_filtered_by_unstorable_text_is_empty(
    storage: Storage, model: Model, bad: str
) -> None:
    for entity, project in [(bad, None), (bad, "proj"), (ENTITY + bad, "proj"), (ENTITY, bad)]:
        for order in ("asc", "desc"):
            page = await storage.list_models(
                entity, project=project, after=None, limit=5, order=order
            )
            assert (page.data, page.has_more) == ([], False)
    for entity in (bad, ENTITY + bad):
        # No model has an unstorable entity, so no id is a cursor of its list.
        with pytest.raises(InvalidCursor) as caught:
            await storage.list_models(entity, project=None, after=model.id, limit=5, order="asc")
        assert caught.type is InvalidCursor
    # The cursor names a model of the entity, as with any other project filter: an empty page.
    page = await storage.list_models(ENTITY, project=bad, after=model.id, limit=5, order="desc")
    assert (page.data, page.has_more) == ([], False)


async def test_an_unstorable_cursor_names_nothing(storage: Storage, model: Model, bad: str) -> None:
    ids = await register_steps(storage, model, {1: {}, 2: {}})

    for after in (bad, ids[1] + bad):
        for order in ("asc", "desc"):
            with pytest.raises(InvalidCursor) as checkpoints:
                await storage.list_checkpoints(ENTITY, model.id, after=after, limit=5, order=order)
            assert checkpoints.type is InvalidCursor
            with pytest.raises(InvalidCursor) as models:
                await storage.list_models(ENTITY, project=None, after=after, limit=5, order=order)
            assert models.type is InvalidCursor


async def test_no_checkpoint_and_no_metric_is_found_by_unstorable_text(
    storage: Storage, model: Model, bad: str
) -> None:
    ids = await register_steps(storage, model, {1: {"loss": 1.0}, 2: {"loss": 0.5}})

    for checkpoint_id in (bad, ids[1] + bad):
        with pytest.raises(CheckpointNotFound):
            await storage.get_checkpoint(ENTITY, model.id, checkpoint_id)
        with pytest.raises(CheckpointNotFound):
            await storage.update_metrics(ENTITY, model.id, checkpoint_id, {"loss": 2.0})
    for mode in ("max", "min"):
        with pytest.raises(MetricNotFound):
            await storage.best_checkpoint(ENTITY, model.id, bad, mode)
    # Nobody has a metric of that name, so retention keeps only the latest.
    result = await storage.apply_retention(
        ENTITY, model.id, keep_latest=1, keep_best=BestRule(bad, "max", 5), dry_run=True
    )
    assert result == RetentionResult([2], [1])


async def test_no_key_is_found_by_unstorable_text(storage: Storage, bad: str) -> None:
    key = hash_key(generate_key())
    created = await storage.create_key(ENTITY, "laptop", key)

    assert await storage.caller_for_key(bad) is None
    assert await storage.caller_for_key(key + bad) is None
    for key_id in (bad, created.id + bad):
        with pytest.raises(KeyNotFound):
            await storage.revoke_key(key_id)
    assert await storage.caller_for_key(key) == Caller(ENTITY, read_only=False)
    assert [k.revoked_at for k in await storage.list_keys()] == [None]
