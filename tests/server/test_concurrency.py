"""Races: many clients at once leave exactly what one careful client would (CONTRACT §4, registration)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
import pytest

from tests.conftest import RunningServer

from .helpers import register, walk

CLIENTS = 16
T = TypeVar("T")


def race(server: RunningServer, key: str, action: Callable[[httpx.Client, int], T]) -> list[T]:
    """Run `action(client, i)` in CLIENTS threads, each with its own connection, released together."""
    barrier = threading.Barrier(CLIENTS)

    def run(index: int) -> T:
        with server.client(key) as client:
            client.get("/health")  # connect before the barrier, so the requests really overlap
            barrier.wait(timeout=30)
            return action(client, index)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(run, range(CLIENTS)))


def checkpoints(model_id: str) -> str:
    return f"/preview/models/{model_id}/checkpoints"


@pytest.mark.parametrize("step", [0, 7, 2**63 - 1])
def test_the_same_step_with_equal_metrics_registers_once(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str, step: int
) -> None:
    responses = race(
        server,
        api_key,
        # `1` and `1.0` are the same value: the retries are identical however they are spelled.
        lambda client, i: client.post(
            checkpoints(model_id), json={"step": step, "metrics": {"loss": 1 if i % 2 else 1.0}}
        ),
    )

    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 200: CLIENTS - 1}, statuses
    assert len({response.json()["id"] for response in responses}) == 1
    created = next(response.json() for response in responses if response.status_code == 201)
    assert all(response.json() == created for response in responses)
    assert walk(api, model_id) == [{"id": created["id"], "step": step, "metrics": {"loss": 1.0}}]


def test_the_same_step_with_different_metrics_registers_one_and_refuses_the_rest(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    responses = race(
        server,
        api_key,
        lambda client, i: client.post(
            checkpoints(model_id), json={"step": 3, "metrics": {"loss": float(i)}}
        ),
    )

    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 409: CLIENTS - 1}, statuses
    winner = next(response.json() for response in responses if response.status_code == 201)
    assert walk(api, model_id) == [{"id": winner["id"], "step": 3, "metrics": winner["metrics"]}]
    for response in responses:
        if response.status_code == 409:
            assert set(response.json()) == {"detail"}


def test_concurrent_registrations_of_different_steps_lose_nothing(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    per_client = 20

    def register_many(client: httpx.Client, index: int) -> list[httpx.Response]:
        # Interleaved steps, so neighbouring keys are written by different clients at once.
        return [
            client.post(checkpoints(model_id), json={"step": n * CLIENTS + index, "metrics": {}})
            for n in range(per_client)
        ]

    responses = [r for batch in race(server, api_key, register_many) for r in batch]

    assert Counter(r.status_code for r in responses) == {201: CLIENTS * per_client}
    listed = walk(api, model_id, limit=100)
    assert [item["step"] for item in listed] == list(range(CLIENTS * per_client))
    assert sorted(item["id"] for item in listed) == sorted(r.json()["id"] for r in responses)


def test_concurrent_deletes_of_the_same_steps_delete_each_once(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    for step in range(30):
        register(api, model_id, step)

    results = race(
        server,
        api_key,
        lambda client, _: client.request(
            "DELETE", checkpoints(model_id), json={"steps": list(range(0, 30, 2))}
        ).json(),
    )

    assert sum(result["deleted_count"] for result in results) == 15
    for result in results:
        assert result["deleted_count"] + len(result["not_found_steps"]) == 15
    assert [item["step"] for item in walk(api, model_id)] == list(range(1, 30, 2))


@pytest.mark.parametrize("return_existing", [False, True])
def test_concurrent_creates_of_one_name_make_one_model(
    server: RunningServer, api: httpx.Client, api_key: str, return_existing: bool
) -> None:
    responses = race(
        server,
        api_key,
        lambda client, _: client.post(
            "/preview/models",
            json={
                "project": "p",
                "name": "same",
                "base_model": "b",
                "return_existing": return_existing,
            },
        ),
    )

    models = api.get("/preview/models").json()["data"]
    assert len(models) == 1
    if return_existing:
        assert all(r.status_code == 200 and r.json() == models[0] for r in responses)
    else:
        assert Counter(r.status_code for r in responses) == {200: 1, 409: CLIENTS - 1}


def test_async_clients_registering_one_step_agree(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    async def register_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(checkpoints(model_id), json={"step": 11, "metrics": {"r": 0.5}})
                    for _ in range(CLIENTS)
                )
            )

    responses = asyncio.run(register_all())

    assert Counter(r.status_code for r in responses) == {201: 1, 200: CLIENTS - 1}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(walk(api, model_id)) == 1


def test_listing_while_registering_sees_consistent_pages(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    def work(client: httpx.Client, index: int) -> list[list[int]]:
        if index % 2 == 0:
            for n in range(15):
                client.post(checkpoints(model_id), json={"step": n * CLIENTS + index})
            return []
        walks = []
        for _ in range(3):
            walks.append([item["step"] for item in walk(client, model_id, limit=7)])
        return walks

    walks = [steps for batch in race(server, api_key, work) for steps in batch]

    for steps in walks:
        assert steps == sorted(set(steps)), "a walk repeated or reordered checkpoints"
    assert len(walk(api, model_id)) == 15 * CLIENTS // 2


def test_deleting_a_model_while_others_register_counts_every_registered_checkpoint(
    server: RunningServer, api: httpx.Client, api_key: str, model_id: str
) -> None:
    def work(client: httpx.Client, index: int) -> list[httpx.Response]:
        if index == 0:
            return [client.delete(f"/preview/models/{model_id}")]
        return [
            client.post(checkpoints(model_id), json={"step": n * CLIENTS + index})
            for n in range(10)
        ]

    results = race(server, api_key, work)

    deleted = results[0][0]
    assert deleted.status_code == 200, deleted.text
    registrations = [response for batch in results[1:] for response in batch]
    assert {response.status_code for response in registrations} <= {201, 404}
    # Every registration that succeeded was live when the model went: none survives, none is missed.
    registered = sum(response.status_code == 201 for response in registrations)
    assert deleted.json()["deleted_checkpoints"] == registered
    assert api.get(checkpoints(model_id)).status_code == 404
