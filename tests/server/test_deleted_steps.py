"""`GET .../checkpoints/deleted-steps`: the steps deleted by a person or retention that have no live
checkpoint now, read from the tombstones, on both databases (and through the SDK)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from ckpt_registry.client import Client

from .test_tombstones import delete_steps, register_steps


def deleted(api: httpx.Client, model_id: str, **params: int) -> httpx.Response:
    return api.get(f"/preview/models/{model_id}/checkpoints/deleted-steps", params=params)


def test_deleted_steps_are_those_with_a_tombstone_and_no_live_checkpoint(
    api: httpx.Client, model_id: str
) -> None:
    register_steps(api, model_id, range(10, 90, 10))
    before = datetime.now(UTC)
    delete_steps(api, model_id, [20, 30])
    retention = api.post(
        f"/preview/models/{model_id}/checkpoints/retention", json={"keep_latest": 3}
    )
    assert retention.json()["deleted_steps"] == [10, 40, 50]
    # Deleted, registered again (live now: not deleted), and deleted twice.
    register_steps(api, model_id, range(30, 31))
    register_steps(api, model_id, range(20, 21))
    delete_steps(api, model_id, [20])

    response = deleted(api, model_id)

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["step"] for item in body["data"]] == [10, 20, 40, 50]
    assert body["object"] == "list" and body["has_more"] is False
    for item in body["data"]:
        at = datetime.fromisoformat(item["deleted_at"])
        assert before <= at <= datetime.now(UTC)
    # Step 20 once, with its later deletion.
    assert body["data"][1]["deleted_at"] > body["data"][0]["deleted_at"]


def test_pages_follow_after_step_and_the_sdk_walks_them(
    api: httpx.Client, model_id: str, server_url: str, api_key: str
) -> None:
    register_steps(api, model_id, range(12))
    delete_steps(api, model_id, list(range(1, 11)))

    first = deleted(api, model_id, limit=4).json()
    rest = deleted(api, model_id, after_step=first["data"][-1]["step"], limit=100).json()

    assert [item["step"] for item in first["data"]] == [1, 2, 3, 4] and first["has_more"]
    assert [item["step"] for item in rest["data"]] == [5, 6, 7, 8, 9, 10]
    assert rest["has_more"] is False
    with Client(api_key=api_key, base_url=server_url) as sdk:
        assert [d.step for d in sdk.checkpoints.deleted_steps(model_id, page_size=3)] == list(
            range(1, 11)
        )
        assert [d.step for d in sdk.checkpoints.deleted_steps(model_id, after_step=8)] == [9, 10]


def test_a_model_without_deletions_has_none(api: httpx.Client, model_id: str) -> None:
    register_steps(api, model_id, range(1, 3))

    assert deleted(api, model_id).json() == {"object": "list", "data": [], "has_more": False}


@pytest.mark.parametrize(
    ("params", "loc"),
    [({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"), ({"after_step": -1}, "after_step")],
)
def test_bad_parameters_are_422(
    api: httpx.Client, model_id: str, params: dict[str, int], loc: str
) -> None:
    response = deleted(api, model_id, **params)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", loc]


def test_an_unknown_model_is_404(api: httpx.Client) -> None:
    for model_id in ("00000000-0000-4000-8000-000000000000", "not-an-id"):
        response = deleted(api, model_id)
        assert response.status_code == 404
        assert response.json() == {"detail": "Model not found"}
