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


def test_another_entitys_ids_are_404_on_the_routes_beyond_the_compatible_surface(
    api: httpx.Client, other: httpx.Client, model_id: str
) -> None:
    """Steps, files, uploads and transfers: another entity's model, checkpoint, upload and cursor
    are answered exactly as ids that never existed."""
    theirs = create_model(other, "theirs")
    their_checkpoint = register(other, theirs, 1, {"loss": 1.0})["id"]
    mine = register(api, model_id, 1, {"loss": 1.0})["id"]
    base = f"/preview/models/{theirs}/checkpoints/{their_checkpoint}"
    assert other.put(f"{base}/files/a.bin", content=b"theirs").status_code == 201
    their_upload = other.post(f"{base}/uploads", json={"path": "b.bin"}).json()["id"]
    before = snapshot(other)

    def same_as_unknown(method: str, template: str, **kwargs: object) -> None:
        answers = []
        for model, checkpoint, upload in (
            (theirs, their_checkpoint, their_upload),
            (str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())),
        ):
            url = template.format(model=model, checkpoint=checkpoint, upload=upload)
            response = api.request(method, url, **kwargs)  # type: ignore[arg-type]
            assert response.status_code == 404, (method, template, response.text)
            answers.append(response.json() if method != "HEAD" else None)
        assert answers[0] == answers[1], (method, template)

    checkpoint = "/preview/models/{model}/checkpoints/{checkpoint}"
    same_as_unknown("GET", "/preview/models/{model}/checkpoints/steps/1")
    same_as_unknown("GET", checkpoint + "/files")
    same_as_unknown("GET", checkpoint + "/files/a.bin")
    same_as_unknown("HEAD", checkpoint + "/files/a.bin")
    same_as_unknown("PUT", checkpoint + "/files/a.bin", content=b"mine")
    same_as_unknown("DELETE", checkpoint + "/files/a.bin")
    same_as_unknown("POST", checkpoint + "/uploads", json={"path": "c.bin"})
    same_as_unknown("POST", checkpoint + "/transfers", json={"operation": "download"})
    same_as_unknown("HEAD", "/preview/uploads/{upload}")
    same_as_unknown(
        "PATCH", "/preview/uploads/{upload}", content=b"x", headers={"Upload-Offset": "0"}
    )
    same_as_unknown("POST", "/preview/uploads/{upload}/complete", json={})
    same_as_unknown("DELETE", "/preview/uploads/{upload}")
    # Their checkpoint in my model, and as a cursor in my list, is unknown too.
    assert_detail(api.get(f"/preview/models/{model_id}/checkpoints/{their_checkpoint}"), 404)
    response = api.get(
        f"/preview/models/{model_id}/checkpoints", params={"after": their_checkpoint}
    )
    assert_validation_error(response, ["query", "after"])
    assert api.get(f"/preview/models/{model_id}/checkpoints/{mine}").status_code == 200
    assert snapshot(other) == before
    assert other.head(f"/preview/uploads/{their_upload}").headers["upload-offset"] == "0"
    assert other.get(f"{base}/files/a.bin").content == b"theirs"
