"""`GET .../checkpoints/series`: a metric's curve, downsampled to a bounded number of points that
keeps its extremes, on both databases; and a retention dry run telling the bytes it would free."""

from __future__ import annotations

from typing import Any

import httpx

from ckpt_registry.contract import SERIES_POINTS_DEFAULT, SERIES_POINTS_MAX

from ..bulk import HIGH_STEP, LOW_STEP, bulk_load, loss_at
from ..conftest import RunningServer, add_key
from .helpers import assert_detail, assert_validation_error, create_model, delete_steps, register

Json = dict[str, Any]


def series(api: httpx.Client, model_id: str, **query: Any) -> Json:
    response = api.get(f"/preview/models/{model_id}/checkpoints/series", params=query)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    assert len(body["steps"]) == len(body["values"])
    assert body["steps"] == sorted(set(body["steps"]))
    return body


def test_a_short_series_comes_whole_in_step_order(api: httpx.Client, model_id: str) -> None:
    for step in (30, 10, 20):
        register(api, model_id, step, {"loss": step / 100, "acc": 1.0})
    register(api, model_id, 40, {"acc": 0.5})  # no loss: not in the loss series
    assert series(api, model_id, metric="loss") == {
        "object": "series",
        "metric": "loss",
        "count": 3,
        "downsampled": False,
        "steps": [10, 20, 30],
        "values": [0.1, 0.2, 0.3],
    }
    delete_steps(api, model_id, [20])
    assert series(api, model_id, metric="loss")["steps"] == [10, 30]
    # A metric no checkpoint has is an empty curve, not an error: a chart shows "no data".
    empty = series(api, model_id, metric="nope")
    assert (empty["count"], empty["steps"], empty["values"]) == (0, [], [])


def test_a_long_series_is_bounded_and_keeps_first_last_and_extremes(
    api: httpx.Client, model_id: str
) -> None:
    values = {step: ((step * 37) % 101) / 100 for step in range(300)}
    values[123], values[222] = -1.0, 9.0
    for step, value in values.items():
        register(api, model_id, step, {"loss": value})
    body = series(api, model_id, metric="loss", points=20)
    assert body["count"] == 300 and body["downsampled"] is True
    assert len(body["steps"]) <= 20
    assert body["steps"][0] == 0 and body["steps"][-1] == 299
    points = dict(zip(body["steps"], body["values"], strict=True))
    assert points[123] == -1.0 and points[222] == 9.0
    assert all(values[step] == value for step, value in points.items())

    zoomed = series(api, model_id, metric="loss", points=20, step_min=100, step_max=149)
    assert zoomed["count"] == 50
    assert zoomed["steps"][0] == 100 and zoomed["steps"][-1] == 149
    assert 123 in zoomed["steps"]
    assert series(api, model_id, metric="loss", step_min=150, step_max=150)["steps"] == [150]


def test_bad_queries_are_refused_with_the_contract_shapes(
    api: httpx.Client, model_id: str, server: RunningServer
) -> None:
    url = f"/preview/models/{model_id}/checkpoints/series"
    assert_validation_error(api.get(url), ["query", "metric"])
    for points in (3, SERIES_POINTS_MAX + 1, "x"):
        assert_validation_error(
            api.get(url, params={"metric": "loss", "points": points}), ["query", "points"]
        )
    assert_validation_error(api.get(url, params={"metric": "loss", "step_min": -1}))
    assert_validation_error(
        api.get(url, params={"metric": "loss", "step_min": 5, "step_max": 4}),
        ["query", "step_max"],
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_detail(
        api.get(f"/preview/models/{unknown}/checkpoints/series", params={"metric": "loss"}),
        404,
        "Model not found",
    )
    with server.client(add_key(server.database_url, "other")) as other:
        theirs = create_model(other, "theirs")
        register(other, theirs, 1, {"loss": 1.0})
        assert_detail(
            api.get(f"/preview/models/{theirs}/checkpoints/series", params={"metric": "loss"}),
            404,
            "Model not found",
        )


def test_a_100000_checkpoint_model_answers_a_bounded_series_with_its_extremes(
    api: httpx.Client, model_id: str, server: RunningServer
) -> None:
    count = 100_000
    bulk_load(server.database_url, model_id, count)
    body = series(api, model_id, metric="loss")
    assert body["count"] == count and body["downsampled"] is True
    assert len(body["steps"]) <= SERIES_POINTS_DEFAULT
    assert body["steps"][0] == 0 and body["steps"][-1] == count - 1
    assert min(body["values"]) == -5.0 and body["steps"][body["values"].index(-5.0)] == LOW_STEP
    assert max(body["values"]) == 50.0 and body["steps"][body["values"].index(50.0)] == HIGH_STEP
    points = dict(zip(body["steps"], body["values"], strict=True))
    assert all(loss_at(step) == value for step, value in points.items())
    # Zoomed into a range around the dip: bounded again, the dip still there.
    zoomed = series(api, model_id, metric="loss", points=100, step_min=50_000, step_max=60_000)
    assert zoomed["count"] == 10_001 and len(zoomed["steps"]) <= 100
    assert LOW_STEP in zoomed["steps"]


def test_a_retention_dry_run_tells_the_bytes_the_run_frees(
    api: httpx.Client, model_id: str, server: RunningServer
) -> None:
    shared, own = b"shared" * 100, [b"own-%d" % step * 50 for step in range(5)]
    for step in range(5):
        checkpoint = register(api, model_id, step, {"loss": 1.0 - step / 10})["id"]
        for path, data in (("tokenizer.json", shared), ("adapter.bin", own[step])):
            url = f"/preview/models/{model_id}/checkpoints/{checkpoint}/files/{path}"
            assert api.put(url, content=data).status_code == 201
    # Another entity holding the same content changes nothing in our answers.
    with server.client(add_key(server.database_url, "other")) as other:
        theirs = create_model(other, "theirs")
        checkpoint = register(other, theirs, 1)["id"]
        url = f"/preview/models/{theirs}/checkpoints/{checkpoint}/files/a"
        assert other.put(url, content=own[0]).status_code == 201

    url = f"/preview/models/{model_id}/checkpoints/retention"
    request = {"keep_latest": 1, "keep_best": {"metric": "loss", "mode": "max", "k": 1}}
    preview = api.post(url, json={**request, "dry_run": True}).json()
    assert preview["deleted_steps"] == [1, 2, 3]
    assert preview["freed_bytes"] == len(own[1]) + len(own[2]) + len(own[3])
    done = api.post(url, json=request).json()
    assert done["deleted_steps"] == preview["deleted_steps"]
    assert done["freed_bytes"] == preview["freed_bytes"]

    # The last two go: now the shared content goes too, counted once; the other entity's copy of
    # own[0] does not show.
    everything = api.post(url, json={"keep_latest": 1, "dry_run": True}).json()
    assert everything["deleted_steps"] == [0]
    assert everything["freed_bytes"] == len(own[0])
    register(api, model_id, 9)  # now step 4 can go as well
    both = api.post(url, json={"keep_latest": 1, "dry_run": True}).json()
    assert both["deleted_steps"] == [0, 4]
    assert both["freed_bytes"] == len(own[0]) + len(own[4]) + len(shared)
    assert api.post(url, json={"keep_latest": 1}).json()["freed_bytes"] == both["freed_bytes"]
