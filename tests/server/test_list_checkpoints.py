"""`GET /v1/preview/models/{id}/checkpoints`: order, cursors, the envelope and its errors (CONTRACT §2)."""

from __future__ import annotations

import random
import uuid

import httpx
import pytest

from tests.conftest import RunningServer, add_key

from .helpers import (
    assert_validation_error,
    create_model,
    delete_steps,
    list_page,
    register,
    walk,
)

# Registered out of order, with step 0, gaps and the largest step there is.
STEPS = [40, 0, 7, 2**63 - 1, 3, 1000, 1, 12, 5]


def url(model_id: str) -> str:
    return f"/preview/models/{model_id}/checkpoints"


def register_steps(api: httpx.Client, model_id: str, steps: list[int]) -> dict[int, str]:
    """Register `steps` in the given order; `{step: id}`."""
    return {step: register(api, model_id, step, {"loss": step % 97})["id"] for step in steps}


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 2, 100])
def test_the_walk_is_ordered_by_step_in_both_orders(
    api: httpx.Client, model_id: str, order: str, limit: int
) -> None:
    ids = register_steps(api, model_id, STEPS)
    expected = sorted(STEPS, reverse=order == "desc")

    items = walk(api, model_id, limit=limit, order=order)

    assert [item["step"] for item in items] == expected
    assert [item["id"] for item in items] == [ids[step] for step in expected]


def test_items_are_exactly_id_step_and_metrics(api: httpx.Client, model_id: str) -> None:
    with_metrics = register(api, model_id, 1, {"loss": 0.5, "acc": 1})
    without = register(api, model_id, 2, {})

    page = list_page(api, model_id)

    assert page["data"] == [
        {"id": with_metrics["id"], "step": 1, "metrics": {"loss": 0.5, "acc": 1.0}},
        {"id": without["id"], "step": 2, "metrics": {}},
    ]


def test_defaults_are_ascending_pages_of_twenty(api: httpx.Client, model_id: str) -> None:
    register_steps(api, model_id, list(range(25, 0, -1)))

    page = list_page(api, model_id)

    assert [item["step"] for item in page["data"]] == list(range(1, 21))
    assert page["has_more"] is True


def test_an_empty_model_has_an_empty_page(api: httpx.Client, model_id: str) -> None:
    for order in ("asc", "desc"):
        page = list_page(api, model_id, order=order)
        assert page == {
            "object": "list",
            "data": [],
            "first_id": "",
            "last_id": "",
            "has_more": False,
        }


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_has_more_is_exact_at_the_page_boundary(
    api: httpx.Client, model_id: str, limit: int
) -> None:
    register_steps(api, model_id, list(range(limit)))

    for order in ("asc", "desc"):
        full = list_page(api, model_id, limit=limit, order=order)
        assert len(full["data"]) == limit
        assert full["has_more"] is False, "exactly `limit` items: nothing more to fetch"

    register(api, model_id, limit)
    for order in ("asc", "desc"):
        first = list_page(api, model_id, limit=limit, order=order)
        assert len(first["data"]) == limit
        assert first["has_more"] is True
        last = list_page(api, model_id, limit=limit, order=order, after=first["last_id"])
        assert len(last["data"]) == 1
        assert last["has_more"] is False


def test_a_page_after_the_last_item_is_empty(api: httpx.Client, model_id: str) -> None:
    ids = register_steps(api, model_id, [1, 2, 3])

    asc = list_page(api, model_id, after=ids[3])
    desc = list_page(api, model_id, after=ids[1], order="desc")

    for page in (asc, desc):
        assert page["data"] == [] and page["has_more"] is False
        assert page["first_id"] == page["last_id"] == ""


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_after_means_strictly_after_in_the_requested_order(
    api: httpx.Client, model_id: str, order: str
) -> None:
    ids = register_steps(api, model_id, STEPS)
    ordered = sorted(STEPS, reverse=order == "desc")

    for position, step in enumerate(ordered):
        page = list_page(api, model_id, after=ids[step], order=order, limit=100)
        assert [item["step"] for item in page["data"]] == ordered[position + 1 :]
        assert page["has_more"] is False
        page = list_page(api, model_id, after=ids[step], order=order, limit=2)
        assert [item["step"] for item in page["data"]] == ordered[position + 1 : position + 3]
        assert page["has_more"] is (len(ordered) - position - 1 > 2)


def test_latest_checkpoint_is_limit_one_descending(api: httpx.Client, model_id: str) -> None:
    ids = register_steps(api, model_id, [10, 30, 20])

    latest = list_page(api, model_id, limit=1, order="desc")
    assert [item["id"] for item in latest["data"]] == [ids[30]]
    assert latest["has_more"] is True

    delete_steps(api, model_id, [30])
    latest = list_page(api, model_id, limit=1, order="desc")
    assert [item["id"] for item in latest["data"]] == [ids[20]]


@pytest.mark.parametrize(
    "limit", ["0", "101", "-1", "abc", "1.5", "", "1e2", "100000000000000000000"]
)
def test_a_limit_outside_1_to_100_is_422(api: httpx.Client, model_id: str, limit: str) -> None:
    register(api, model_id, 1)
    response = api.get(url(model_id), params={"limit": limit})
    assert_validation_error(response, ["query", "limit"])


@pytest.mark.parametrize("order", ["ASC", "Desc", "", "ascending", "random"])
def test_an_order_other_than_asc_or_desc_is_422(
    api: httpx.Client, model_id: str, order: str
) -> None:
    register(api, model_id, 1)
    response = api.get(url(model_id), params={"order": order})
    assert_validation_error(response, ["query", "order"])


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_an_after_that_names_no_checkpoint_of_this_model_is_422(
    server: RunningServer, api: httpx.Client, model_id: str, order: str
) -> None:
    mine = register(api, model_id, 5)["id"]
    sibling = create_model(api, "sibling")
    siblings_checkpoint = register(api, sibling, 5)["id"]
    with server.client(add_key(server.database_url, "other")) as other:
        foreign_model = create_model(other, "theirs")
        foreign_checkpoint = register(other, foreign_model, 5)["id"]
    register(api, model_id, 6)

    cursors = {
        "malformed": "not-a-uuid",
        "empty": "",
        "uppercase form of a real id": mine.upper(),
        "braced form of a real id": "{" + mine + "}",
        "unknown": str(uuid.uuid4()),
        "the model's own id": model_id,
        "another model's checkpoint": siblings_checkpoint,
        "another entity's checkpoint": foreign_checkpoint,
        "another entity's model": foreign_model,
    }
    for name, cursor in cursors.items():
        response = api.get(url(model_id), params={"after": cursor, "order": order})
        assert response.status_code == 422, f"{name}: {response.text}"
        assert_validation_error(response, ["query", "after"])


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_deleted_cursor_continues_from_its_position(
    api: httpx.Client, model_id: str, order: str
) -> None:
    register_steps(api, model_id, list(range(10)))
    ordered = list(range(10)) if order == "asc" else list(range(9, -1, -1))

    first = list_page(api, model_id, limit=3, order=order)
    cursor_step = first["data"][-1]["step"]
    delete_steps(api, model_id, [cursor_step])

    second = list_page(api, model_id, limit=3, order=order, after=first["last_id"])
    assert [item["step"] for item in second["data"]] == ordered[3:6]
    assert second["has_more"] is True


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_deleting_the_cursor_and_its_neighbours_keeps_the_walk_going(
    api: httpx.Client, model_id: str, order: str
) -> None:
    register_steps(api, model_id, list(range(10)))
    first = list_page(api, model_id, limit=5, order=order)
    # Everything on the first page, the item right after it, and nothing else.
    following = 5 if order == "asc" else 4
    delete_steps(api, model_id, [item["step"] for item in first["data"]] + [following])

    second = list_page(api, model_id, limit=5, order=order, after=first["last_id"])

    expected = [6, 7, 8, 9] if order == "asc" else [3, 2, 1, 0]
    assert [item["step"] for item in second["data"]] == expected
    assert second["has_more"] is False


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_deletes_between_pages_never_break_or_repeat_a_walk(
    api: httpx.Client, model_id: str, order: str, seed: int
) -> None:
    rng = random.Random(seed)
    steps = rng.sample(range(200), 40)
    ids = register_steps(api, model_id, steps)
    live = set(steps)
    deleted: set[int] = set()

    seen: list[dict[str, object]] = []
    query: dict[str, object] = {"limit": rng.choice([1, 3, 4]), "order": order}
    while True:
        page = list_page(api, model_id, **query)
        seen.extend(page["data"])
        if not page["has_more"]:
            break
        query["after"] = page["last_id"]
        # Delete the cursor item sometimes, and a few items on either side of it.
        doomed = set(rng.sample(sorted(live), min(len(live), rng.randint(0, 3))))
        if rng.random() < 0.5:
            doomed.add(int(page["data"][-1]["step"]))
        delete_steps(api, model_id, sorted(doomed))
        live -= doomed
        deleted |= doomed

    seen_steps = [int(item["step"]) for item in seen]
    assert len(set(seen_steps)) == len(seen_steps), "no checkpoint may appear twice"
    assert seen_steps == sorted(seen_steps, reverse=order == "desc")
    assert all(item["id"] == ids[int(item["step"])] for item in seen)  # type: ignore[call-overload]
    assert live <= set(seen_steps), "a checkpoint that was never deleted was skipped"


def test_a_reregistered_step_is_a_new_checkpoint(api: httpx.Client, model_id: str) -> None:
    ids = register_steps(api, model_id, [1, 2, 3])
    delete_steps(api, model_id, [2])

    again = register(api, model_id, 2, {"loss": 2})

    assert again["id"] != ids[2]
    assert api.get(f"{url(model_id)}/{ids[2]}").status_code == 404
    assert [item["id"] for item in walk(api, model_id)] == [ids[1], again["id"], ids[3]]
    # The old id still works as a cursor (its position is remembered); it is never listed.
    after_old = list_page(api, model_id, after=ids[2])
    assert [item["step"] for item in after_old["data"]][-1] == 3
    assert ids[2] not in [item["id"] for item in after_old["data"]]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_every_request_for_a_page_gets_the_same_bytes(
    server: RunningServer, api: httpx.Client, model_id: str, order: str
) -> None:
    ids = register_steps(api, model_id, [1, 2, 3, 4, 5])
    base = f"{server.url}{url(model_id)}"
    # The same page asked for in several spellings (a repeated parameter, a `+` sign, leading zeros),
    # which the server may answer by different code paths.
    spellings = [
        f"after={ids[2]}&limit=2&order={order}",
        f"order={order}&limit=02&after={ids[2]}",
        f"after={ids[2]}&limit=%2B2&order={order}",
        f"after={ids[2]}&limit=2&order={order}&order={order}",
    ]
    responses = [api.get(httpx.URL(f"{base}?{query}")) for query in spellings]

    assert {response.status_code for response in responses} == {200}
    assert len({response.content for response in responses}) == 1
    assert {response.headers["content-type"] for response in responses} == {"application/json"}
