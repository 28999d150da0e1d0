"""Entities are isolated: another entity's model is indistinguishable from one that does not exist."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningServer, add_key

from .helpers import (
    MODEL_SCOPED,
    Endpoint,
    assert_detail,
    assert_validation_error,
    create_model,
    list_models,
    register,
    snapshot,
)


@pytest.fixture
def other(server: RunningServer) -> Iterator[httpx.Client]:
    """A client for entity `other`."""
    with server.client(add_key(server.database_url, "other")) as client:
        yield client


@pytest.mark.parametrize("endpoint", MODEL_SCOPED, ids=str)
def test_another_entitys_model_is_not_found_everywhere(
    api: httpx.Client, other: httpx.Client, endpoint: Endpoint
) -> None:
    # Same project and name as one of ours: nothing about it may leak either.
    theirs = create_model(other, "model")
    their_checkpoint = register(other, theirs, 1, {"loss": 1.0})["id"]
    mine = create_model(api, "model")
    before = snapshot(other)

    response = endpoint.request(api, theirs, their_checkpoint)

    assert_detail(response, 404, "Model not found")
    assert snapshot(other) == before
    assert snapshot(api)[mine]["checkpoints"] == []
    # An id that was never issued gets exactly the same answer.
    unknown = endpoint.request(api, str(uuid.uuid4()), their_checkpoint)
    assert (unknown.status_code, unknown.json()) == (response.status_code, response.json())


def test_another_entitys_models_are_not_listed(api: httpx.Client, other: httpx.Client) -> None:
    theirs = create_model(other, "shared-name")
    mine = create_model(api, "shared-name")  # names are unique per entity, not globally

    assert [model["id"] for model in list_models(api)] == [mine]
    assert [model["id"] for model in list_models(api, project="proj")] == [mine]
    assert [model["id"] for model in list_models(other)] == [theirs]
    assert list_models(api, project="nope") == []


def test_another_entitys_model_is_no_cursor_for_my_list(
    api: httpx.Client, other: httpx.Client
) -> None:
    create_model(api, "mine")
    theirs = create_model(other, "theirs")

    for order in ("asc", "desc"):
        response = api.get("/preview/models", params={"after": theirs, "order": order})
        assert_validation_error(response, ["query", "after"])


def test_another_entitys_checkpoint_is_not_found_in_my_model(
    api: httpx.Client, other: httpx.Client, model_id: str
) -> None:
    theirs = create_model(other, "theirs")
    their_checkpoint = register(other, theirs, 1)["id"]
    register(api, model_id, 1)

    response = api.get(f"/preview/models/{model_id}/checkpoints/{their_checkpoint}")
    assert_detail(response, 404, "Checkpoint not found")
    patch = api.patch(
        f"/preview/models/{model_id}/checkpoints/{their_checkpoint}", json={"metrics": {"x": 1}}
    )
    assert_detail(patch, 404, "Checkpoint not found")
    assert (
        other.get(f"/preview/models/{theirs}/checkpoints/{their_checkpoint}").json()["metrics"]
        == {}
    )


def test_creating_a_model_for_another_entity_is_403(api: httpx.Client, other: httpx.Client) -> None:
    before_mine, before_theirs = snapshot(api), snapshot(other)

    for return_existing in (False, True):
        response = api.post(
            "/preview/models",
            json={
                "entity": "other",
                "project": "proj",
                "name": "sneaky",
                "base_model": "base",
                "return_existing": return_existing,
            },
        )
        assert_detail(response, 403)

    assert snapshot(api) == before_mine
    assert snapshot(other) == before_theirs


@pytest.mark.parametrize("entity", ["absent", None, "default"])
def test_a_missing_or_null_entity_means_the_keys_own(api: httpx.Client, entity: str | None) -> None:
    body: dict[str, object] = {"project": "proj", "name": "m", "base_model": "base"}
    if entity != "absent":
        body["entity"] = entity

    response = api.post("/preview/models", json=body)

    assert response.status_code == 200, response.text
    assert response.json()["entity"] == "default"
    assert api.get(f"/preview/models/{response.json()['id']}").json() == response.json()
