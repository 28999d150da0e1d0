"""Models: create (unique live names, return_existing), get, list pages, delete (CONTRACT §1, §4)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from .helpers import (
    MODEL_SCOPED,
    Endpoint,
    assert_detail,
    assert_envelope,
    assert_validation_error,
    create_model,
    delete_steps,
    list_models,
    register,
    snapshot,
)


def create(api: httpx.Client, **body: object) -> httpx.Response:
    return api.post("/preview/models", json={"project": "proj", "base_model": "base", **body})


def page(api: httpx.Client, **query: object) -> dict[str, object]:
    response = api.get("/preview/models", params=query)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert_envelope(body)
    return body


def ids(items: object) -> list[str]:
    assert isinstance(items, list)
    return [item["id"] for item in items]


def test_create_returns_the_model(api: httpx.Client) -> None:
    response = create(api, name="llama-ft", base_model="meta/llama")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "id": body["id"],
        "entity": "default",
        "project": "proj",
        "name": "llama-ft",
        "base_model": "meta/llama",
        "run_id": None,
    }
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert api.get(f"/preview/models/{body['id']}").json() == body


def test_a_live_name_is_taken_within_its_project(api: httpx.Client) -> None:
    first = create(api, name="m").json()

    again = create(api, name="m", base_model="other")

    assert_detail(again, 409)
    assert ids(list_models(api)) == [first["id"]]
    # The same name in another project is another model.
    elsewhere = create(api, name="m", project="proj2")
    assert elsewhere.status_code == 200
    assert elsewhere.json()["id"] != first["id"]


def test_return_existing_gives_the_existing_model_unchanged(api: httpx.Client) -> None:
    first = create(api, name="m", base_model="base-a").json()

    again = create(api, name="m", base_model="base-b", return_existing=True)

    assert again.status_code == 200, again.text
    assert again.json() == first
    assert api.get(f"/preview/models/{first['id']}").json() == first
    assert ids(list_models(api)) == [first["id"]]


def test_return_existing_creates_a_model_that_does_not_exist(api: httpx.Client) -> None:
    response = create(api, name="fresh", return_existing=True)

    assert response.status_code == 200
    assert ids(list_models(api)) == [response.json()["id"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"project": "p", "base_model": "b"}, ["body", "name"]),
        ({"name": "n", "base_model": "b"}, ["body", "project"]),
        ({"project": "p", "name": "n"}, ["body", "base_model"]),
        ({"project": "p", "name": "", "base_model": "b"}, ["body", "name"]),
        ({"project": "p", "name": "n", "base_model": "b", "return_existing": "yes"}, None),
        ({"project": 5, "name": "n", "base_model": "b"}, ["body", "project"]),
    ],
)
def test_an_invalid_model_is_422_and_not_created(
    api: httpx.Client, body: dict[str, object], loc: list[str] | None
) -> None:
    response = api.post("/preview/models", json=body)

    assert_validation_error(response, loc)
    assert list_models(api) == []


def test_get_an_unknown_or_malformed_model_is_404(api: httpx.Client, model_id: str) -> None:
    for unknown in (str(uuid.uuid4()), "nope", model_id.upper(), model_id + "0"):
        assert_detail(api.get(f"/preview/models/{unknown}"), 404, "Model not found")


@pytest.mark.parametrize("limit", [1, 2, 5, 100])
def test_list_models_pages_in_creation_order_both_ways(api: httpx.Client, limit: int) -> None:
    created = [create_model(api, f"m{i}", project=f"p{i % 2}") for i in range(5)]

    for order, expected in (("asc", created), ("desc", created[::-1])):
        walked: list[str] = []
        query: dict[str, object] = {"limit": limit, "order": order}
        pages = 0
        while True:
            current = page(api, **query)
            pages += 1
            walked += ids(current["data"])
            if not current["has_more"]:
                break
            query["after"] = current["last_id"]
        assert walked == expected
        assert pages == max(1, -(-len(expected) // limit)), "has_more must be exact"

    assert ids(list_models(api, project="p0")) == created[0::2]
    assert ids(list_models(api, project="p1", order="desc")) == created[1::2][::-1]


def test_list_models_defaults_to_twenty_ascending(api: httpx.Client) -> None:
    created = [create_model(api, f"m{i:02}") for i in range(21)]

    first = page(api)

    assert ids(first["data"]) == created[:20]
    assert first["has_more"] is True
    assert page(api) == page(api, limit=20, order="asc")


def test_list_models_of_an_empty_entity(api: httpx.Client) -> None:
    assert page(api) == {
        "object": "list",
        "data": [],
        "first_id": "",
        "last_id": "",
        "has_more": False,
    }


def test_list_models_rejects_bad_queries(api: httpx.Client, model_id: str) -> None:
    for limit in ("0", "101", "x"):
        assert_validation_error(
            api.get("/preview/models", params={"limit": limit}), ["query", "limit"]
        )
    for order in ("ASC", "up"):
        assert_validation_error(
            api.get("/preview/models", params={"order": order}), ["query", "order"]
        )
    checkpoint = register(api, model_id, 1)["id"]
    for after in ("nope", str(uuid.uuid4()), checkpoint, model_id.upper()):
        assert_validation_error(
            api.get("/preview/models", params={"after": after}), ["query", "after"]
        )


def test_deleting_the_cursor_model_keeps_the_walk_going(api: httpx.Client) -> None:
    created = [create_model(api, f"m{i}") for i in range(6)]
    first = page(api, limit=2)
    assert api.delete(f"/preview/models/{first['last_id']}").status_code == 200

    second = page(api, limit=2, after=first["last_id"])

    assert ids(second["data"]) == created[2:4]


def test_delete_model_counts_its_live_checkpoints(api: httpx.Client, model_id: str) -> None:
    for step in range(5):
        register(api, model_id, step)
    delete_steps(api, model_id, [0, 1])

    response = api.delete(f"/preview/models/{model_id}")

    assert response.status_code == 200, response.text
    assert response.json() == {"model_id": model_id, "deleted_checkpoints": 3, "deleted_run": False}


def test_delete_an_empty_model(api: httpx.Client, model_id: str) -> None:
    response = api.delete(f"/preview/models/{model_id}")
    assert response.json() == {"model_id": model_id, "deleted_checkpoints": 0, "deleted_run": False}


@pytest.mark.parametrize("endpoint", MODEL_SCOPED, ids=str)
def test_a_deleted_model_is_404_everywhere(
    api: httpx.Client, model_id: str, endpoint: Endpoint
) -> None:
    checkpoint = register(api, model_id, 1, {"loss": 1.0})["id"]
    other = create_model(api, "bystander")
    register(api, other, 1)
    assert api.delete(f"/preview/models/{model_id}").status_code == 200
    before = snapshot(api)

    assert_detail(endpoint.request(api, model_id, checkpoint), 404, "Model not found")
    assert snapshot(api) == before
    assert model_id not in before


def test_a_deleted_models_name_can_be_used_again(api: httpx.Client, model_id: str) -> None:
    register(api, model_id, 1)
    assert api.delete(f"/preview/models/{model_id}").status_code == 200

    again = create(api, name="model")

    assert again.status_code == 200, again.text
    assert again.json()["id"] != model_id
    assert ids(list_models(api)) == [again.json()["id"]]
    assert snapshot(api)[again.json()["id"]]["checkpoints"] == []
    assert_detail(api.get(f"/preview/models/{model_id}"), 404, "Model not found")
    # return_existing never resurrects the deleted one either.
    assert create(api, name="model", return_existing=True).json() == again.json()
