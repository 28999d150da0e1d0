"""`GET .../checkpoints/metrics`: every metric name a model's live checkpoints have, however old the
checkpoints, each once and in byte order, paged by name, on both databases."""

from __future__ import annotations

from typing import Any

import httpx

from ckpt_registry.contract import METRIC_NAMES_LIMIT_MAX

from ..bulk import bulk_load
from ..conftest import RunningServer, add_key
from .helpers import assert_detail, assert_validation_error, create_model, delete_steps, register

Json = dict[str, Any]


def metric_names(api: httpx.Client, model_id: str, **query: Any) -> Json:
    response = api.get(f"/preview/models/{model_id}/checkpoints/metrics", params=query)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    assert body["object"] == "list" and isinstance(body["has_more"], bool)
    return body


def every_name(api: httpx.Client, model_id: str, limit: int) -> list[str]:
    """Every name, page by page, as a client walks (after = the last name of a page)."""
    names: list[str] = []
    query: dict[str, Any] = {"limit": limit}
    for _ in range(1000):
        page = metric_names(api, model_id, **query)
        names += page["data"]
        if not page["has_more"]:
            return names
        query["after"] = page["data"][-1]
    raise AssertionError("the walk never ended")


def in_byte_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda name: name.encode())


def test_every_live_checkpoints_names_once_in_byte_order(api: httpx.Client, model_id: str) -> None:
    # Upper case before lower case, and non-ASCII after both, on both databases: a linguistic
    # collation ("alpha" < "Beta") would order these differently.
    register(api, model_id, 1, {"eval/early": 0.5, "loss": 1.0})
    for step in range(2, 40):
        register(api, model_id, step, {"loss": 1 / step, "Beta": 2.0, "alpha": 1.0})
    only_once = register(api, model_id, 40, {"émoji": 1.0, "日本": 2.0, "😀": 3.0, "Z": 4.0})

    names = metric_names(api, model_id)

    expected = ["Beta", "Z", "alpha", "eval/early", "loss", "émoji", "日本", "😀"]
    assert expected == in_byte_order(expected)
    assert names == {"object": "list", "data": expected, "has_more": False}

    # A merge adds its names; a deleted checkpoint takes the names only it had.
    response = api.patch(
        f"/preview/models/{model_id}/checkpoints/{only_once['id']}",
        json={"metrics": {"eval/late": 1}},
    )
    assert response.status_code == 200, response.text
    delete_steps(api, model_id, [1])
    assert "eval/early" not in metric_names(api, model_id)["data"]
    assert "eval/late" in metric_names(api, model_id)["data"]
    delete_steps(api, model_id, [40])
    assert metric_names(api, model_id)["data"] == ["Beta", "alpha", "loss"]
    # Retention deletes as a person does.
    retention = api.post(
        f"/preview/models/{model_id}/checkpoints/retention", json={"keep_latest": 0}
    )
    assert retention.status_code == 200, retention.text
    assert metric_names(api, model_id)["data"] == ["Beta", "alpha", "loss"]  # the latest stays

    empty = create_model(api, "empty")
    assert metric_names(api, empty) == {"object": "list", "data": [], "has_more": False}


def test_pages_follow_after_in_byte_order(api: httpx.Client, model_id: str) -> None:
    names = [f"m{index:03d}" for index in range(25)] + ["A", "é"]
    for step, start in enumerate(range(0, len(names), 4)):
        register(api, model_id, step, dict.fromkeys(names[start : start + 4], 1.0))

    first = metric_names(api, model_id, limit=5)
    assert first == {"object": "list", "data": in_byte_order(names)[:5], "has_more": True}
    assert every_name(api, model_id, limit=5) == in_byte_order(names)
    assert every_name(api, model_id, limit=1) == in_byte_order(names)
    exact = metric_names(api, model_id, limit=len(names))
    assert exact["data"] == in_byte_order(names) and exact["has_more"] is False
    # `after` is a position, not necessarily a name the model has.
    assert metric_names(api, model_id, after="m0105")["data"] == ["m011", *names[12:25], "é"]
    assert metric_names(api, model_id, after="é") == {
        "object": "list",
        "data": [],
        "has_more": False,
    }


def test_bad_queries_and_other_models_are_refused(
    api: httpx.Client, model_id: str, server: RunningServer
) -> None:
    url = f"/preview/models/{model_id}/checkpoints/metrics"
    for limit in (0, METRIC_NAMES_LIMIT_MAX + 1, "x"):
        assert_validation_error(api.get(url, params={"limit": limit}), ["query", "limit"])
    for after in ("", "a\x00b", "x" * 257):
        assert_validation_error(api.get(url, params={"after": after}), ["query", "after"])
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_detail(api.get(f"/preview/models/{unknown}/checkpoints/metrics"), 404, "Model not found")
    with server.client(add_key(server.database_url, "other")) as other:
        theirs = create_model(other, "theirs")
        register(other, theirs, 1, {"secret": 1.0})
        assert_detail(
            api.get(f"/preview/models/{theirs}/checkpoints/metrics"), 404, "Model not found"
        )
    assert api.delete(f"/preview/models/{model_id}").status_code == 200
    assert_detail(api.get(url), 404, "Model not found")


def test_a_name_only_early_checkpoints_of_100000_have_is_listed(
    api: httpx.Client, model_id: str, server: RunningServer
) -> None:
    bulk_load(server.database_url, model_id, 100_000)
    early = api.get(f"/preview/models/{model_id}/checkpoints/steps/3").json()["id"]
    response = api.patch(
        f"/preview/models/{model_id}/checkpoints/{early}", json={"metrics": {"eval/acc": 0.25}}
    )
    assert response.status_code == 200, response.text

    assert metric_names(api, model_id)["data"] == ["eval/acc", "loss", "reward"]
    assert every_name(api, model_id, limit=1) == ["eval/acc", "loss", "reward"]
