"""Checkpoint lifecycle over HTTP: metrics merged by PATCH (also under concurrency) and the best
checkpoint by one metric (docs/lifecycle.md)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest

from ..conftest import RunningServer

TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def register(api: httpx.Client, model_id: str, step: int, **metrics: float) -> dict[str, Any]:
    response = api.post(
        f"/preview/models/{model_id}/checkpoints", json={"step": step, "metrics": metrics}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def patch(api: httpx.Client, model_id: str, checkpoint_id: str, body: object) -> httpx.Response:
    return api.patch(f"/preview/models/{model_id}/checkpoints/{checkpoint_id}", json=body)


def best(api: httpx.Client, model_id: str, metric: str, mode: str | None = None) -> httpx.Response:
    params = {"metric": metric} | ({"mode": mode} if mode is not None else {})
    return api.get(f"/preview/models/{model_id}/checkpoints/best", params=params)


def listed_metrics(api: httpx.Client, model_id: str) -> dict[int, dict[str, float]]:
    page = api.get(f"/preview/models/{model_id}/checkpoints", params={"limit": 100}).json()
    return {item["step"]: item["metrics"] for item in page["data"]}


# PATCH: merge metrics ---------------------------------------------------------------------------


def test_patch_adds_new_names_and_overwrites_existing_ones(
    api: httpx.Client, model_id: str
) -> None:
    created = register(api, model_id, 10, loss=0.5, acc=0.7)

    response = patch(api, model_id, created["id"], {"metrics": {"acc": 0.9, "eval/bleu": 31}})

    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["id"] == created["id"]
    assert detail["step"] == 10
    assert detail["metrics"] == {"loss": 0.5, "acc": 0.9, "eval/bleu": 31.0}
    # The list endpoint (its fast path included) shows the merge at once, as does the detail.
    assert listed_metrics(api, model_id) == {10: {"loss": 0.5, "acc": 0.9, "eval/bleu": 31.0}}
    fetched = api.get(f"/preview/models/{model_id}/checkpoints/{created['id']}").json()
    assert fetched == detail


def test_patch_keeps_created_at_and_moves_updated_at(api: httpx.Client, model_id: str) -> None:
    created = register(api, model_id, 1, loss=1.0)
    assert created["created_at"] == created["updated_at"]
    assert created["created_at"].endswith("Z")

    detail = patch(api, model_id, created["id"], {"metrics": {"acc": 0.5}}).json()

    assert detail["created_at"] == created["created_at"]
    assert datetime.strptime(detail["updated_at"], TIMESTAMP) > datetime.strptime(
        created["updated_at"], TIMESTAMP
    )


def test_patch_with_no_metrics_changes_nothing_but_updated_at(
    api: httpx.Client, model_id: str
) -> None:
    created = register(api, model_id, 1, loss=1.0)

    response = patch(api, model_id, created["id"], {"metrics": {}})

    assert response.status_code == 200, response.text
    assert response.json()["metrics"] == {"loss": 1.0}
    assert listed_metrics(api, model_id) == {1: {"loss": 1.0}}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "metrics"]),
        ({"metrics": {"acc": "0.5"}}, ["body", "metrics", "*"]),
        ({"metrics": {"acc": True}}, ["body", "metrics", "*"]),
        ({"metrics": {"acc": None}}, ["body", "metrics", "*"]),
        ({"metrics": {"": 1.0}}, ["body", "metrics", "*"]),
        ({"metrics": {"x" * 257: 1.0}}, ["body", "metrics", "*"]),
        ({"metrics": {f"m{i}": 1.0 for i in range(1001)}}, ["body", "metrics"]),
        ({"metrics": [1.0]}, ["body", "metrics"]),
    ],
    ids=["missing", "string", "bool", "null", "empty-name", "long-name", "too-many", "list"],
)
def test_patch_validates_like_registration(
    api: httpx.Client, model_id: str, body: dict[str, Any], loc: list[str]
) -> None:
    created = register(api, model_id, 1, loss=1.0)

    response = patch(api, model_id, created["id"], body)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:3] == loc[:3]
    assert listed_metrics(api, model_id) == {1: {"loss": 1.0}}


@pytest.mark.parametrize("raw", ['{"metrics": {"acc": NaN}}', '{"metrics": {"acc": Infinity}}'])
def test_patch_refuses_non_finite_values(api: httpx.Client, model_id: str, raw: str) -> None:
    created = register(api, model_id, 1, loss=1.0)

    response = api.patch(
        f"/preview/models/{model_id}/checkpoints/{created['id']}",
        content=raw,
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 422, response.text
    assert listed_metrics(api, model_id) == {1: {"loss": 1.0}}


def test_patch_may_not_grow_a_checkpoint_past_1000_metrics(
    api: httpx.Client, model_id: str
) -> None:
    """CONTRACT 5: at most 1,000 metrics per checkpoint, however they arrived."""
    full = {f"m{i}": float(i) for i in range(1000)}
    response = api.post(
        f"/preview/models/{model_id}/checkpoints", json={"step": 1, "metrics": full}
    )
    assert response.status_code == 201, response.text

    response = patch(api, model_id, response.json()["id"], {"metrics": {"one-more": 1.0}})

    assert response.status_code == 422, (
        f"{response.status_code}: {len(response.json()['metrics'])} metrics"
    )
    assert len(listed_metrics(api, model_id)[1]) == 1000


def test_patch_of_unknown_or_deleted_checkpoint_is_404(api: httpx.Client, model_id: str) -> None:
    created = register(api, model_id, 1, loss=1.0)
    unknown = "00000000-0000-4000-8000-000000000000"
    for checkpoint_id in (unknown, "not-a-uuid", created["id"].upper()):
        response = patch(api, model_id, checkpoint_id, {"metrics": {"acc": 1.0}})
        assert response.status_code == 404, checkpoint_id
        assert response.json() == {"detail": "Checkpoint not found"}

    deleted = api.request(
        "DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": [1]}
    ).json()
    assert deleted["deleted_count"] == 1
    response = patch(api, model_id, created["id"], {"metrics": {"acc": 1.0}})
    assert response.status_code == 404
    assert response.json() == {"detail": "Checkpoint not found"}
    # The deleted checkpoint's metrics stay gone: re-registering the step starts afresh.
    again = register(api, model_id, 1)
    assert again["id"] != created["id"]
    assert again["metrics"] == {}


def test_patch_of_another_models_checkpoint_is_404(api: httpx.Client, model_id: str) -> None:
    created = register(api, model_id, 1, loss=1.0)
    other = api.post(
        "/preview/models", json={"project": "proj", "name": "other", "base_model": "base"}
    ).json()["id"]

    response = patch(api, other, created["id"], {"metrics": {"acc": 1.0}})

    assert response.status_code == 404
    assert listed_metrics(api, model_id) == {1: {"loss": 1.0}}


def test_patch_needs_a_key(server: RunningServer, api: httpx.Client, model_id: str) -> None:
    created = register(api, model_id, 1, loss=1.0)
    with server.client(None) as anonymous:
        response = patch(anonymous, model_id, created["id"], {"metrics": {"acc": 1.0}})
    assert response.status_code == 401
    assert listed_metrics(api, model_id) == {1: {"loss": 1.0}}


def test_concurrent_patches_lose_no_metric(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    created = register(api, model_id, 7, loss=0.25)
    names = [f"eval/task_{i:03d}" for i in range(64)]

    async def patch_all() -> list[int]:
        limits = httpx.Limits(max_connections=len(names))
        async with httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
            limits=limits,
        ) as client:
            responses = await asyncio.gather(
                *(
                    client.patch(
                        f"/preview/models/{model_id}/checkpoints/{created['id']}",
                        json={"metrics": {name: float(i), "last_writer": float(i)}},
                    )
                    for i, name in enumerate(names)
                )
            )
        return [response.status_code for response in responses]

    assert asyncio.run(patch_all()) == [200] * len(names)

    metrics = listed_metrics(api, model_id)[7]
    assert metrics == {"loss": 0.25, **{name: float(i) for i, name in enumerate(names)}} | {
        "last_writer": metrics["last_writer"]
    }
    assert metrics["last_writer"] in {float(i) for i in range(len(names))}
    # The index `best` reads agrees with the stored document.
    assert best(api, model_id, names[-1]).json()["metrics"] == metrics
    assert (
        best(api, model_id, "last_writer").json()["metrics"]["last_writer"]
        == metrics["last_writer"]
    )


# GET .../checkpoints/best -----------------------------------------------------------------------


def test_best_by_max_and_min(api: httpx.Client, model_id: str) -> None:
    register(api, model_id, 1, loss=0.9, acc=0.1)
    register(api, model_id, 2, loss=0.2, acc=0.8)
    register(api, model_id, 3, loss=0.5, acc=0.6)

    assert best(api, model_id, "acc", "max").json()["step"] == 2
    assert best(api, model_id, "loss", "min").json()["step"] == 2
    assert best(api, model_id, "loss", "max").json()["step"] == 1
    assert best(api, model_id, "acc", "min").json()["step"] == 1
    # `mode` defaults to max; the answer is a full CheckpointDetail.
    detail = best(api, model_id, "acc").json()
    assert set(detail) == {
        "id",
        "step",
        "metrics",
        "created_at",
        "updated_at",
        "files",
        "size_bytes",
    }
    assert detail["step"] == 2
    assert detail["metrics"] == {"loss": 0.2, "acc": 0.8}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_ties_go_to_the_later_step(api: httpx.Client, model_id: str, mode: str) -> None:
    # Registered out of order, so neither insertion order nor id order can pass for "later step".
    for step in (20, 5, 30, 10):
        register(api, model_id, step, score=1.0 if step != 10 else (2.0 if mode == "min" else 0.0))
    register(api, model_id, 25, other=1.0)

    response = best(api, model_id, "score", mode)

    assert response.status_code == 200
    assert response.json()["step"] == 30


def test_best_treats_1_and_1_0_as_a_tie(api: httpx.Client, model_id: str) -> None:
    api.post(f"/preview/models/{model_id}/checkpoints", json={"step": 4, "metrics": {"m": 1.0}})
    api.post(f"/preview/models/{model_id}/checkpoints", json={"step": 3, "metrics": {"m": 1}})

    assert best(api, model_id, "m", "max").json()["step"] == 4
    assert best(api, model_id, "m", "min").json()["step"] == 4


def test_checkpoints_without_the_metric_never_win(api: httpx.Client, model_id: str) -> None:
    register(api, model_id, 1, loss=5.0)
    register(api, model_id, 2, acc=0.9)
    register(api, model_id, 3)

    for mode in ("max", "min"):
        assert best(api, model_id, "loss", mode).json()["step"] == 1
        assert best(api, model_id, "acc", mode).json()["step"] == 2


def test_negative_values_rank_correctly(api: httpx.Client, model_id: str) -> None:
    register(api, model_id, 1, reward=-0.5)
    register(api, model_id, 2, reward=-3.0)
    register(api, model_id, 3, reward=0.0)
    register(api, model_id, 4, reward=-1e-300)

    assert best(api, model_id, "reward", "max").json()["step"] == 3
    assert best(api, model_id, "reward", "min").json()["step"] == 2


def test_best_is_404_with_a_detail_when_no_checkpoint_has_the_metric(
    api: httpx.Client, model_id: str
) -> None:
    response = best(api, model_id, "loss")
    assert response.status_code == 404
    assert "loss" in response.json()["detail"]

    register(api, model_id, 1, acc=1.0)
    response = best(api, model_id, "loss", "min")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "loss" in detail
    assert detail != "Model not found"


def test_best_follows_patches_and_deletes(api: httpx.Client, model_id: str) -> None:
    first = register(api, model_id, 1, acc=0.5)
    register(api, model_id, 2, acc=0.6)
    assert best(api, model_id, "acc").json()["step"] == 2

    patch(api, model_id, first["id"], {"metrics": {"acc": 0.99, "bleu": 1.0}})
    assert best(api, model_id, "acc").json()["step"] == 1
    assert best(api, model_id, "bleu").json()["step"] == 1

    api.request("DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": [1]})
    assert best(api, model_id, "acc").json()["step"] == 2
    assert best(api, model_id, "bleu").status_code == 404


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({}, ["query", "metric"]),
        ({"metric": ""}, ["query", "metric"]),
        ({"metric": "acc", "mode": "best"}, ["query", "mode"]),
        ({"metric": "acc", "mode": "MAX"}, ["query", "mode"]),
    ],
)
def test_best_validates_its_query(
    api: httpx.Client, model_id: str, params: dict[str, str], loc: list[str]
) -> None:
    register(api, model_id, 1, acc=1.0)

    response = api.get(f"/preview/models/{model_id}/checkpoints/best", params=params)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


def test_best_of_unknown_model_is_404(api: httpx.Client) -> None:
    response = best(api, "00000000-0000-4000-8000-000000000000", "acc")
    assert response.status_code == 404
    assert response.json() == {"detail": "Model not found"}


def test_patch_racing_delete_leaves_no_stray_metric(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    """Whichever wins, a deleted checkpoint's metrics go with it: `best` never answers from (or is
    blinded by) a metric of a deleted checkpoint, and the step can be registered again."""
    names = [f"late_{i}" for i in range(8)]
    register(api, model_id, 0, **{name: -100.0 for name in names})

    async def race(checkpoint_id: str, step: int) -> list[int]:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
        ) as client:
            base = f"/preview/models/{model_id}/checkpoints"
            patches = [
                client.patch(f"{base}/{checkpoint_id}", json={"metrics": {name: float(step)}})
                for name in names
            ]
            delete = client.request("DELETE", base, json={"steps": [step]})
            responses = await asyncio.gather(*patches[:4], delete, *patches[4:])
        return [response.status_code for response in responses]

    for step in range(1, 31):
        created = register(api, model_id, step, loss=1.0)
        statuses = asyncio.run(race(created["id"], step))
        assert set(statuses) <= {200, 404}, statuses
        for name in names:
            response = best(api, model_id, name)
            assert response.status_code == 200, (step, name, response.text)
            assert response.json()["step"] == 0, (step, name)
        # A new checkpoint at the step must not inherit the old one's metrics in the index.
        again = api.post(
            f"/preview/models/{model_id}/checkpoints", json={"step": step, "metrics": {"loss": 2.0}}
        )
        assert again.status_code == 201, (step, again.text)
        assert [best(api, model_id, name).json()["step"] for name in names] == [0] * len(names)
        api.request("DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": [step]})
