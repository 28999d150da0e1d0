"""Retention over HTTP: keep the latest N and the top k by a metric, delete the rest, report exactly
what went; never the latest checkpoint, never one registered while it runs (docs/lifecycle.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from ..conftest import RunningServer


def register(api: httpx.Client, model_id: str, step: int, **metrics: float) -> str:
    response = api.post(
        f"/preview/models/{model_id}/checkpoints", json={"step": step, "metrics": metrics}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def retention(api: httpx.Client, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/preview/models/{model_id}/checkpoints/retention", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def live_steps(api: httpx.Client, model_id: str) -> list[int]:
    steps: list[int] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"after": after} if after else {})
        page = api.get(f"/preview/models/{model_id}/checkpoints", params=params).json()
        steps += [item["step"] for item in page["data"]]
        if not page["has_more"]:
            return steps
        after = page["last_id"]


@pytest.fixture
def ten(api: httpx.Client, model_id: str) -> dict[int, str]:
    """Steps 10..100 with `acc` rising to a peak at 40 and `loss` lowest at 60; step 50 has neither."""
    acc = {10: 0.1, 20: 0.3, 30: 0.5, 40: 0.9, 60: 0.7, 70: 0.6, 80: 0.4, 90: 0.2, 100: 0.05}
    loss = {10: 3.0, 20: 2.0, 30: 1.5, 40: 1.2, 60: 0.3, 70: 0.8, 80: 0.9, 90: 1.0, 100: 1.1}
    ids = {}
    for step in range(10, 101, 10):
        metrics = {"acc": acc[step], "loss": loss[step]} if step in acc else {}
        ids[step] = register(api, model_id, step, **metrics)
    return ids


ALL = list(range(10, 101, 10))


@pytest.mark.usefixtures("ten")
def test_keeps_latest_n_and_top_k_by_max(api: httpx.Client, model_id: str) -> None:
    result = retention(
        api, model_id, {"keep_latest": 2, "keep_best": {"metric": "acc", "mode": "max", "k": 2}}
    )

    assert result == {
        "dry_run": False,
        "kept_steps": [40, 60, 90, 100],
        "deleted_steps": [10, 20, 30, 50, 70, 80],
        "freed_bytes": 0,
    }
    assert live_steps(api, model_id) == [40, 60, 90, 100]


@pytest.mark.usefixtures("ten")
def test_keeps_top_k_by_min(api: httpx.Client, model_id: str) -> None:
    result = retention(
        api, model_id, {"keep_latest": 1, "keep_best": {"metric": "loss", "mode": "min", "k": 3}}
    )

    assert result["kept_steps"] == [60, 70, 80, 100]
    assert result["deleted_steps"] == [10, 20, 30, 40, 50, 90]
    assert live_steps(api, model_id) == [60, 70, 80, 100]


def test_best_and_latest_may_overlap(api: httpx.Client, model_id: str) -> None:
    for step, acc in ((1, 0.1), (2, 0.2), (3, 0.3)):
        register(api, model_id, step, acc=acc)

    result = retention(api, model_id, {"keep_latest": 1, "keep_best": {"metric": "acc", "k": 1}})

    assert result["kept_steps"] == [3]
    assert result["deleted_steps"] == [1, 2]


@pytest.mark.usefixtures("ten")
def test_keep_latest_zero_still_keeps_the_latest(api: httpx.Client, model_id: str) -> None:
    result = retention(api, model_id, {"keep_latest": 0})

    assert result["kept_steps"] == [100]
    assert result["deleted_steps"] == ALL[:-1]
    assert live_steps(api, model_id) == [100]


@pytest.mark.usefixtures("ten")
def test_keep_latest_zero_with_best_keeps_best_and_latest(api: httpx.Client, model_id: str) -> None:
    result = retention(
        api, model_id, {"keep_latest": 0, "keep_best": {"metric": "acc", "mode": "max", "k": 1}}
    )

    assert result["kept_steps"] == [40, 100]
    assert live_steps(api, model_id) == [40, 100]


@pytest.mark.usefixtures("ten")
def test_k_zero_keeps_only_the_latest_n(api: httpx.Client, model_id: str) -> None:
    result = retention(api, model_id, {"keep_latest": 3, "keep_best": {"metric": "acc", "k": 0}})

    assert result["kept_steps"] == [80, 90, 100]
    assert live_steps(api, model_id) == [80, 90, 100]


@pytest.mark.usefixtures("ten")
def test_k_larger_than_the_model_keeps_every_checkpoint_with_the_metric(
    api: httpx.Client, model_id: str
) -> None:
    result = retention(api, model_id, {"keep_latest": 1, "keep_best": {"metric": "acc", "k": 1000}})

    # Step 50 has no `acc`: a checkpoint without the metric is never among the best.
    assert result["kept_steps"] == [10, 20, 30, 40, 60, 70, 80, 90, 100]
    assert result["deleted_steps"] == [50]


@pytest.mark.usefixtures("ten")
def test_keep_latest_larger_than_the_model_deletes_nothing(
    api: httpx.Client, model_id: str
) -> None:
    result = retention(api, model_id, {"keep_latest": 2**63 - 1})

    assert result == {"dry_run": False, "kept_steps": ALL, "deleted_steps": [], "freed_bytes": 0}
    assert live_steps(api, model_id) == ALL


@pytest.mark.usefixtures("ten")
def test_metric_no_checkpoint_has_keeps_only_the_latest_n(api: httpx.Client, model_id: str) -> None:
    result = retention(api, model_id, {"keep_latest": 2, "keep_best": {"metric": "bleu", "k": 5}})

    assert result["kept_steps"] == [90, 100]


def test_best_ties_go_to_the_later_step(api: httpx.Client, model_id: str) -> None:
    for step in (5, 1, 3, 2, 4):
        register(api, model_id, step, score=1.0)
    register(api, model_id, 6, other=1.0)

    result = retention(
        api, model_id, {"keep_latest": 1, "keep_best": {"metric": "score", "mode": "min", "k": 2}}
    )

    assert result["kept_steps"] == [4, 5, 6]


def test_empty_model(api: httpx.Client, model_id: str) -> None:
    result = retention(api, model_id, {"keep_latest": 0, "keep_best": {"metric": "acc", "k": 1}})
    assert result == {"dry_run": False, "kept_steps": [], "deleted_steps": [], "freed_bytes": 0}


def test_dry_run_reports_without_deleting(
    api: httpx.Client, model_id: str, ten: dict[int, str]
) -> None:
    body = {"keep_latest": 2, "keep_best": {"metric": "acc", "mode": "max", "k": 2}}

    preview = retention(api, model_id, body | {"dry_run": True})

    assert preview == {
        "dry_run": True,
        "kept_steps": [40, 60, 90, 100],
        "deleted_steps": [10, 20, 30, 50, 70, 80],
        "freed_bytes": 0,
    }
    assert live_steps(api, model_id) == ALL
    # Nothing was tombstoned either: the ids still name live checkpoints.
    assert api.get(f"/preview/models/{model_id}/checkpoints/{ten[10]}").status_code == 200
    real = retention(api, model_id, body)
    assert real["deleted_steps"] == preview["deleted_steps"]
    assert retention(api, model_id, body)["deleted_steps"] == []


def test_deleted_checkpoints_leave_tombstones(
    api: httpx.Client, model_id: str, ten: dict[int, str]
) -> None:
    """A walk holding a cursor on a checkpoint retention deleted continues from its position."""
    retention(api, model_id, {"keep_latest": 3})

    for order, expected in (("asc", [80, 90, 100]), ("desc", [])):
        page = api.get(
            f"/preview/models/{model_id}/checkpoints", params={"after": ten[50], "order": order}
        )
        assert page.status_code == 200, page.text
        assert [item["step"] for item in page.json()["data"]] == expected
    assert api.get(f"/preview/models/{model_id}/checkpoints/{ten[50]}").status_code == 404
    assert (
        api.get(f"/preview/models/{model_id}/checkpoints/best", params={"metric": "acc"}).json()[
            "step"
        ]
        == 80
    )


def test_reregistering_a_deleted_step_makes_a_new_checkpoint(
    api: httpx.Client, model_id: str, ten: dict[int, str]
) -> None:
    retention(api, model_id, {"keep_latest": 1})
    new_id = register(api, model_id, 10, acc=0.5)
    assert new_id != ten[10]
    assert live_steps(api, model_id) == [10, 100]


@pytest.mark.usefixtures("ten")
@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "keep_latest"]),
        ({"keep_latest": -1}, ["body", "keep_latest"]),
        ({"keep_latest": "2"}, ["body", "keep_latest"]),
        ({"keep_latest": 2.0}, ["body", "keep_latest"]),
        ({"keep_latest": 1, "dry_run": "yes"}, ["body", "dry_run"]),
        ({"keep_latest": 1, "keep_best": {"metric": "acc", "k": -1}}, ["body", "keep_best", "k"]),
        ({"keep_latest": 1, "keep_best": {"metric": "acc"}}, ["body", "keep_best", "k"]),
        ({"keep_latest": 1, "keep_best": {"metric": "", "k": 1}}, ["body", "keep_best", "metric"]),
        (
            {"keep_latest": 1, "keep_best": {"metric": "acc", "mode": "up", "k": 1}},
            ["body", "keep_best", "mode"],
        ),
    ],
)
def test_invalid_requests_are_422_and_delete_nothing(
    api: httpx.Client, model_id: str, body: dict[str, Any], loc: list[str]
) -> None:
    response = api.post(f"/preview/models/{model_id}/checkpoints/retention", json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert live_steps(api, model_id) == ALL


def test_unknown_model_and_missing_key(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    register(api, model_id, 1)
    register(api, model_id, 2)
    response = api.post(
        "/preview/models/00000000-0000-4000-8000-000000000000/checkpoints/retention",
        json={"keep_latest": 0},
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "Model not found"}
    with server.client(None) as anonymous:
        response = anonymous.post(
            f"/preview/models/{model_id}/checkpoints/retention", json={"keep_latest": 0}
        )
    assert response.status_code == 401
    assert live_steps(api, model_id) == [1, 2]


# Races ------------------------------------------------------------------------------------------


def test_retention_racing_with_registrations_and_deletes(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    """Registrations of new, higher steps race retention (and a plain DELETE of old steps).

    `keep_latest` covers every new step, so a correct retention keeps them whether or not it saw them;
    one that deletes "everything not in the keep set" would delete those it did not see.
    """
    old = list(range(200))
    new = list(range(1000, 1060))
    for step in old:
        register(api, model_id, step, acc=step / 1000)
    deleted_by_delete = set(old[100:120])

    async def race() -> tuple[list[dict[str, Any]], list[int], dict[str, Any]]:
        async with httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
            limits=httpx.Limits(max_connections=100),
        ) as client:
            base = f"/preview/models/{model_id}/checkpoints"

            async def register_new(step: int) -> int:
                response = await client.post(base, json={"step": step, "metrics": {"acc": 0.0}})
                return response.status_code

            async def retain() -> dict[str, Any]:
                await asyncio.sleep(0.01)  # let some registrations land first, others after
                body = {
                    "keep_latest": len(new),
                    "keep_best": {"metric": "acc", "mode": "max", "k": 5},
                }
                response = await client.post(f"{base}/retention", json=body)
                assert response.status_code == 200, response.text
                result: dict[str, Any] = response.json()
                return result

            async def delete() -> dict[str, Any]:
                response = await client.request(
                    "DELETE", base, json={"steps": sorted(deleted_by_delete)}
                )
                assert response.status_code == 200, response.text
                result: dict[str, Any] = response.json()
                return result

            retentions, deleted, statuses = await asyncio.gather(
                asyncio.gather(*(retain() for _ in range(3))),
                delete(),
                asyncio.gather(*(register_new(step) for step in new)),
            )
        return retentions, statuses, deleted

    retentions, statuses, deleted = asyncio.run(race())

    assert statuses == [201] * len(new)
    live = set(live_steps(api, model_id))
    assert set(new) <= live, "a checkpoint registered during retention was deleted"
    # Every old checkpoint that went was reported by exactly one request, and nothing reported is live.
    reported = [step for result in retentions for step in result["deleted_steps"]]
    reported += [step for step in deleted_by_delete if step not in deleted["not_found_steps"]]
    assert len(reported) == len(set(reported)), "a checkpoint was reported deleted twice"
    assert set(reported) == set(old) - live
    assert deleted["deleted_count"] == len(deleted_by_delete) - len(deleted["not_found_steps"])
    for result in retentions:
        assert not set(result["deleted_steps"]) & set(result["kept_steps"])
    # Once the dust settles the same rule leaves the new steps and the five best old ones (195..199).
    retention(api, model_id, {"keep_latest": len(new), "keep_best": {"metric": "acc", "k": 5}})
    assert set(live_steps(api, model_id)) == set(new) | set(old[-5:])
