"""The `Storage` Protocol's keys and models, called directly, with the same assertions on every backend."""

from __future__ import annotations

import uuid

import anyio
import pytest

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import Storage
from ckpt_registry.storage.base import Caller, Model
from ckpt_registry.storage.errors import InvalidCursor, KeyNotFound, ModelNameTaken, ModelNotFound

from .conftest import ENTITY, OTHER_ENTITY, is_utc, register_steps, walk_models

pytestmark = pytest.mark.anyio


# Keys -------------------------------------------------------------------------------------------


async def test_check_passes_on_a_healthy_database(storage: Storage) -> None:
    await storage.check()  # raises DatabaseUnavailable when it does not pass


async def test_keys_are_listed_in_creation_order_and_counted(storage: Storage) -> None:
    assert (await storage.list_keys(), await storage.count_keys()) == ([], 0)

    created = [
        await storage.create_key(entity, name, hash_key(generate_key()))
        for entity, name in [(ENTITY, "laptop"), (OTHER_ENTITY, "ci"), (ENTITY, "trainer")]
    ]

    assert [(key.entity, key.name, key.revoked_at) for key in created] == [
        (ENTITY, "laptop", None),
        (OTHER_ENTITY, "ci", None),
        (ENTITY, "trainer", None),
    ]
    assert all(is_utc(key.created_at) for key in created)
    assert len({key.id for key in created}) == 3
    assert await storage.list_keys() == sorted(created, key=lambda key: (key.created_at, key.id))
    assert await storage.count_keys() == 3


async def test_revoking_a_key_is_idempotent_and_keeps_it_listed(storage: Storage) -> None:
    key = await storage.create_key(ENTITY, "laptop", hash_key(generate_key()))
    other = await storage.create_key(ENTITY, "ci", hash_key(generate_key()))

    revoked = await storage.revoke_key(key.id)
    again = await storage.revoke_key(key.id)

    assert (revoked.id, revoked.entity, revoked.name) == (key.id, ENTITY, "laptop")
    assert revoked.created_at == key.created_at
    assert revoked.revoked_at is not None and is_utc(revoked.revoked_at)
    assert revoked.revoked_at >= key.created_at
    assert again == revoked  # the first revocation time stays
    assert {k.id: k.revoked_at for k in await storage.list_keys()} == {
        key.id: revoked.revoked_at,
        other.id: None,
    }
    assert await storage.count_keys() == 2


async def test_revoking_an_unknown_or_malformed_key_id_is_key_not_found(storage: Storage) -> None:
    key = await storage.create_key(ENTITY, "laptop", hash_key(generate_key()))

    for key_id in [str(uuid.uuid4()), key.id.upper(), key.id + " ", "not-a-key", "", "0" * 36]:
        with pytest.raises(KeyNotFound) as caught:
            await storage.revoke_key(key_id)
        assert caught.value.message == f"no key with id {key_id!r}"

    assert await storage.list_keys() == [key]


async def test_a_key_hash_names_its_entity_while_the_key_is_live(storage: Storage) -> None:
    key, other = hash_key(generate_key()), hash_key(generate_key())
    created = await storage.create_key(ENTITY, "laptop", key)
    await storage.create_key(OTHER_ENTITY, "ci", other)
    assert await storage.caller_for_key(other) == Caller(OTHER_ENTITY, read_only=False)
    assert await storage.caller_for_key(hash_key(generate_key())) is None
    # Looked up again and again, as a busy server does, so whatever a backend caches is warm.
    for _ in range(10):
        assert await storage.caller_for_key(key) == Caller(ENTITY, read_only=False)
        await anyio.sleep(0.02)

    await storage.revoke_key(created.id)
    assert await storage.caller_for_key(key) is None  # at once, not after a cache expires
    assert await storage.caller_for_key(other) == Caller(OTHER_ENTITY, read_only=False)


async def test_a_key_created_after_a_failed_lookup_works_at_once(storage: Storage) -> None:
    key = hash_key(generate_key())
    assert await storage.caller_for_key(key) is None

    await storage.create_key(ENTITY, "late", key)

    assert await storage.caller_for_key(key) == Caller(ENTITY, read_only=False)


# Models -----------------------------------------------------------------------------------------


async def test_a_created_model_can_be_read_back(storage: Storage) -> None:
    model, created = await storage.create_model(
        ENTITY, "proj", "llama-ft", "llama-3", return_existing=False
    )

    assert created
    assert (model.entity, model.project, model.name, model.base_model) == (
        ENTITY,
        "proj",
        "llama-ft",
        "llama-3",
    )
    assert str(uuid.UUID(model.id)) == model.id  # canonical lowercase
    assert is_utc(model.created_at)
    assert await storage.get_model(ENTITY, model.id) == model


async def test_return_existing_answers_the_live_model_of_that_name(
    storage: Storage, model: Model
) -> None:
    again, created = await storage.create_model(
        ENTITY, model.project, model.name, "another-base", return_existing=True
    )

    assert (again, created) == (model, False)
    assert (
        await storage.list_models(ENTITY, project=None, after=None, limit=10, order="asc")
    ).data == [model]


async def test_a_live_name_is_taken_only_in_its_own_entity_and_project(
    storage: Storage, model: Model
) -> None:
    with pytest.raises(ModelNameTaken) as caught:
        await storage.create_model(ENTITY, "proj", "model", "base", return_existing=False)

    assert caught.value.message == "A model named 'model' already exists in project 'proj'"
    elsewhere, created = await storage.create_model(
        ENTITY, "other-proj", "model", "base", return_existing=False
    )
    assert created and elsewhere.id != model.id
    foreign, created = await storage.create_model(
        OTHER_ENTITY, "proj", "model", "base", return_existing=True
    )
    assert created and foreign.id != model.id


async def test_a_name_is_free_again_once_its_model_is_deleted(
    storage: Storage, model: Model
) -> None:
    await storage.delete_model(ENTITY, model.id)

    again, created = await storage.create_model(
        ENTITY, "proj", "model", "base", return_existing=False
    )

    assert created and again.id != model.id
    assert await storage.get_model(ENTITY, again.id) == again
    with pytest.raises(ModelNotFound):
        await storage.get_model(ENTITY, model.id)


async def test_a_model_is_not_found_for_another_entity_nor_by_a_malformed_or_deleted_id(
    storage: Storage, model: Model
) -> None:
    deleted, _ = await storage.create_model(ENTITY, "proj", "gone", "base", return_existing=False)
    await storage.delete_model(ENTITY, deleted.id)

    for entity, model_id in [
        (OTHER_ENTITY, model.id),
        (ENTITY, model.id.upper()),
        (ENTITY, model.id + " "),
        (ENTITY, "not-a-uuid"),
        (ENTITY, ""),
        (ENTITY, str(uuid.uuid4())),
        (ENTITY, deleted.id),
    ]:
        with pytest.raises(ModelNotFound) as caught:
            await storage.get_model(entity, model_id)
        assert caught.value.message == "Model not found"


async def test_models_are_paged_in_both_orders_with_exact_has_more(storage: Storage) -> None:
    created = [
        (await storage.create_model(ENTITY, "proj", f"m{index}", "b", return_existing=False))[0]
        for index in range(5)
    ]
    await storage.create_model(OTHER_ENTITY, "proj", "theirs", "b", return_existing=False)
    gone, _ = await storage.create_model(ENTITY, "proj", "gone", "b", return_existing=False)
    await storage.delete_model(ENTITY, gone.id)
    expected = sorted(created, key=lambda model: (model.created_at, model.id))

    for limit, flags in [(1, [True] * 4 + [False]), (2, [True, True, False]), (5, [False])]:
        assert await walk_models(storage, ENTITY, project=None, limit=limit, order="asc") == (
            expected,
            flags,
        )
        assert await walk_models(storage, ENTITY, project=None, limit=limit, order="desc") == (
            expected[::-1],
            flags,
        )
    page = await storage.list_models(ENTITY, project=None, after=None, limit=4, order="asc")
    assert (page.data, page.has_more) == (expected[:4], True)
    page = await storage.list_models(
        ENTITY, project=None, after=expected[1].id, limit=10, order="desc"
    )
    assert (page.data, page.has_more) == (expected[:1], False)


async def test_the_project_filter_keeps_only_that_projects_models(storage: Storage) -> None:
    by_project: dict[str, list[Model]] = {"vision": [], "text": []}
    for index in range(6):
        project = "vision" if index % 2 else "text"
        model, _ = await storage.create_model(
            ENTITY, project, f"m{index}", "b", return_existing=False
        )
        by_project[project].append(model)

    for project, models in by_project.items():
        expected = sorted(models, key=lambda model: (model.created_at, model.id))
        assert await walk_models(storage, ENTITY, project=project, limit=2, order="asc") == (
            expected,
            [True, False],
        )
        assert await walk_models(storage, ENTITY, project=project, limit=2, order="desc") == (
            expected[::-1],
            [True, False],
        )
    empty = await storage.list_models(ENTITY, project="audio", after=None, limit=5, order="asc")
    assert (empty.data, empty.has_more) == ([], False)
    # A cursor is a position in the entity's models: one from another project seeks just as well.
    cursor = by_project["text"][1]
    page = await storage.list_models(
        ENTITY, project="vision", after=cursor.id, limit=5, order="asc"
    )
    position = (cursor.created_at, cursor.id)
    assert page.data == sorted(
        (model for model in by_project["vision"] if (model.created_at, model.id) > position),
        key=lambda model: (model.created_at, model.id),
    )
    assert page.data  # models were created alternately: some vision ones come after it


async def test_a_model_list_cursor_must_name_a_model_of_the_entity(
    storage: Storage, model: Model
) -> None:
    foreign, _ = await storage.create_model(
        OTHER_ENTITY, "proj", "theirs", "b", return_existing=False
    )
    checkpoint_ids = await register_steps(storage, model, {1: {}})

    for after in [
        str(uuid.uuid4()),
        foreign.id,
        checkpoint_ids[1],
        model.id.upper(),
        "not-a-uuid",
        "",
    ]:
        for order in ("asc", "desc"):
            with pytest.raises(InvalidCursor) as caught:
                await storage.list_models(ENTITY, project=None, after=after, limit=5, order=order)
            assert caught.type is InvalidCursor
            assert caught.value.message == "after is not the id of a model in this list"


async def test_a_deleted_models_id_still_works_as_a_cursor(storage: Storage) -> None:
    created = [
        (await storage.create_model(ENTITY, "proj", f"m{index}", "b", return_existing=False))[0]
        for index in range(4)
    ]
    expected = sorted(created, key=lambda model: (model.created_at, model.id))
    await storage.delete_model(ENTITY, expected[1].id)

    page = await storage.list_models(
        ENTITY, project=None, after=expected[1].id, limit=5, order="asc"
    )

    assert (page.data, page.has_more) == (expected[2:], False)


async def test_a_model_is_found_by_its_name_only_live_and_only_in_its_entity(
    storage: Storage, model: Model
) -> None:
    assert await storage.get_model_by_name(ENTITY, model.project, model.name) == model
    gone, _ = await storage.create_model(ENTITY, "proj", "gone", "base", return_existing=False)
    await storage.delete_model(ENTITY, gone.id)
    for entity, project, name in [
        (OTHER_ENTITY, model.project, model.name),
        (ENTITY, "other-proj", model.name),
        (ENTITY, model.project, "no-such-model"),
        (ENTITY, "proj", "gone"),
        (ENTITY, "proj", "nul\x00"),
    ]:
        with pytest.raises(ModelNotFound):
            await storage.get_model_by_name(entity, project, name)


async def test_a_read_only_key_carries_its_scope_through_every_lookup(storage: Storage) -> None:
    reader, writer = hash_key(generate_key()), hash_key(generate_key())
    created = await storage.create_key(ENTITY, "inference", reader, read_only=True)
    await storage.create_key(ENTITY, "trainer", writer)

    assert created.read_only
    # Again and again, so a backend's key cache answers too (PostgreSQL's is kept by LISTEN).
    for _ in range(10):
        assert await storage.caller_for_key(reader) == Caller(ENTITY, read_only=True)
        assert await storage.caller_for_key(writer) == Caller(ENTITY, read_only=False)
        await anyio.sleep(0.02)
    listed = {key.name: key.read_only for key in await storage.list_keys()}
    assert listed == {"inference": True, "trainer": False}
    await storage.revoke_key(created.id)
    assert await storage.caller_for_key(reader) is None
