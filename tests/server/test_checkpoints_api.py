"""Checkpoints: register (idempotent retries, conflicts), get by id, and delete by steps (CONTRACT §2, §4)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from .helpers import (
    assert_detail,
    assert_validation_error,
    create_model,
    delete_steps,
    register,
    snapshot,
    walk,
)


def url(model_id: str) -> str:
    return f"/preview/models/{model_id}/checkpoints"


def post(api: httpx.Client, model_id: str, body: object) -> httpx.Response:
    return api.post(url(model_id), json=body)


def parse_utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0)
    return moment


def test_register_returns_the_checkpoint_detail(api: httpx.Client, model_id: str) -> None:
    before = datetime.now(UTC)
    response = post(api, model_id, {"step": 7, "metrics": {"loss": 0.25, "acc": 1}})
    after = datetime.now(UTC)

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "step", "metrics", "created_at", "updated_at", "files", "size_bytes"}
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["step"] == 7
    assert body["metrics"] == {"loss": 0.25, "acc": 1.0}
    assert all(isinstance(value, float) for value in body["metrics"].values())
    created = parse_utc(body["created_at"])
    assert before - timedelta(seconds=5) <= created <= after + timedelta(seconds=5)
    assert body["updated_at"] == body["created_at"]
    assert api.get(f"{url(model_id)}/{body['id']}").json() == body


def test_metrics_come_back_exactly_as_sent(api: httpx.Client, model_id: str) -> None:
    metrics = {
        "tenth": 0.1,
        "third": 1 / 3,
        "huge": 1.7976931348623157e308,
        "tiny": 5e-324,
        "negative": -2.5e-300,
        "zero": 0.0,
        "int": 42,
        "big int": 2**53,
        "unicode ✓ name": 1.5,
        "x" * 256: 2.0,
    }

    body = post(api, model_id, {"step": 1, "metrics": metrics}).json()

    assert body["metrics"] == metrics
    assert walk(api, model_id)[0]["metrics"] == metrics


def test_metrics_may_be_omitted_or_empty(api: httpx.Client, model_id: str) -> None:
    omitted = post(api, model_id, {"step": 1})
    empty = post(api, model_id, {"step": 2, "metrics": {}})

    assert omitted.status_code == empty.status_code == 201
    assert omitted.json()["metrics"] == empty.json()["metrics"] == {}
    assert post(api, model_id, {"step": 1, "metrics": {}}).status_code == 200


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ({"loss": 1.0}, {"loss": 1.0}),
        ({"loss": 1}, {"loss": 1.0}),
        ({"loss": 1.0}, {"loss": 1}),
        ({"a": 1, "b": 2}, {"b": 2.0, "a": 1}),
        ({}, {}),
    ],
)
def test_registering_a_step_again_with_equal_metrics_returns_it(
    api: httpx.Client, model_id: str, first: dict[str, float], again: dict[str, float]
) -> None:
    created = post(api, model_id, {"step": 3, "metrics": first})
    assert created.status_code == 201

    retried = post(api, model_id, {"step": 3, "metrics": again})

    assert retried.status_code == 200, retried.text
    assert retried.json() == created.json()
    assert [item["id"] for item in walk(api, model_id)] == [created.json()["id"]]


@pytest.mark.parametrize(
    "again",
    [{"loss": 2.0}, {"loss": 1.0, "acc": 0.5}, {}, {"LOSS": 1.0}, {"loss": 1.0000000000000002}],
)
def test_registering_a_step_again_with_other_metrics_is_409(
    api: httpx.Client, model_id: str, again: dict[str, float]
) -> None:
    created = post(api, model_id, {"step": 3, "metrics": {"loss": 1.0}}).json()
    before = snapshot(api)

    response = post(api, model_id, {"step": 3, "metrics": again})

    assert_detail(response, 409)
    assert snapshot(api) == before
    assert api.get(f"{url(model_id)}/{created['id']}").json() == created


def test_the_same_step_in_two_models_is_two_checkpoints(api: httpx.Client, model_id: str) -> None:
    other = create_model(api, "other")

    mine = register(api, model_id, 1, {"loss": 1})
    theirs = post(api, other, {"step": 1, "metrics": {"loss": 2}})

    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine["id"]


def test_the_extreme_steps_register(api: httpx.Client, model_id: str) -> None:
    low = register(api, model_id, 0)
    high = register(api, model_id, 2**63 - 1)

    assert [item["id"] for item in walk(api, model_id)] == [low["id"], high["id"]]
    assert api.get(f"{url(model_id)}/{high['id']}").json()["step"] == 2**63 - 1


def test_get_checkpoint_by_id(api: httpx.Client, model_id: str) -> None:
    created = register(api, model_id, 5, {"loss": 0.5})

    response = api.get(f"{url(model_id)}/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_get_a_checkpoint_that_is_not_in_this_model_is_404(
    api: httpx.Client, model_id: str
) -> None:
    mine = register(api, model_id, 1)
    sibling = create_model(api, "sibling")
    siblings = register(api, sibling, 1)["id"]
    gone = register(api, model_id, 2)["id"]
    delete_steps(api, model_id, [2])

    for checkpoint_id in (str(uuid.uuid4()), siblings, gone, "nope", mine["id"].upper(), sibling):
        response = api.get(f"{url(model_id)}/{checkpoint_id}")
        assert_detail(response, 404, "Checkpoint not found")
    assert api.get(f"{url(sibling)}/{siblings}").status_code == 200


def test_get_checkpoint_by_step(api: httpx.Client, model_id: str) -> None:
    created = register(api, model_id, 7, {"loss": 0.5})
    register(api, model_id, 9)
    delete_steps(api, model_id, [9])

    response = api.get(f"{url(model_id)}/steps/7")
    assert response.status_code == 200
    assert response.json() == created
    for step in (8, 9, 2**63 - 1):
        assert_detail(api.get(f"{url(model_id)}/steps/{step}"), 404, "Checkpoint not found")
    for bad in ("-1", "x", str(2**63), "1.0", "007", "+7", "1" * 20):
        assert_validation_error(api.get(f"{url(model_id)}/steps/{bad}"), ["path", "step"])
    assert_detail(api.get(f"{url(str(uuid.uuid4()))}/steps/7"), 404, "Model not found")


def test_delete_by_steps_reports_what_it_did(api: httpx.Client, model_id: str) -> None:
    for step in (1, 2, 3, 4):
        register(api, model_id, step)

    result = delete_steps(api, model_id, [4, 9, 2, 4, 7, 9, 2, 8])

    assert result == {"deleted_count": 2, "not_found_steps": [9, 7, 8]}
    assert [item["step"] for item in walk(api, model_id)] == [1, 3]
    # Deleted steps are gone: a second delete finds nothing.
    assert delete_steps(api, model_id, [2, 4, 1]) == {"deleted_count": 1, "not_found_steps": [2, 4]}


def test_delete_with_no_steps_deletes_nothing(api: httpx.Client, model_id: str) -> None:
    register(api, model_id, 1)

    assert delete_steps(api, model_id, []) == {"deleted_count": 0, "not_found_steps": []}
    assert len(walk(api, model_id)) == 1


def test_delete_accepts_ten_thousand_steps(api: httpx.Client, model_id: str) -> None:
    for step in (0, 5_000, 9_999):
        register(api, model_id, step)
    register(api, model_id, 10_000)

    result = delete_steps(api, model_id, list(range(10_000)))

    assert result["deleted_count"] == 3
    assert len(result["not_found_steps"]) == 9_997
    assert result["not_found_steps"][:3] == [1, 2, 3]
    assert [item["step"] for item in walk(api, model_id)] == [10_000]


def test_delete_of_more_than_ten_thousand_steps_is_422(api: httpx.Client, model_id: str) -> None:
    register(api, model_id, 1)
    before = snapshot(api)

    response = api.request("DELETE", url(model_id), json={"steps": list(range(10_001))})

    assert_validation_error(response, ["body", "steps"])
    assert snapshot(api) == before


def test_delete_of_a_duplicate_heavy_list_counts_each_step_once(
    api: httpx.Client, model_id: str
) -> None:
    register(api, model_id, 1)

    result = delete_steps(api, model_id, [1] * 10_000)

    assert result == {"deleted_count": 1, "not_found_steps": []}
