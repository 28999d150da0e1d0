"""Three `ckpt serve` processes on one PostgreSQL database behave as one registry."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import open_storage
from tests import pg

PROCESSES = 3


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    admin_url = pg.postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
    with pg.fresh_database(admin_url) as url:
        yield url


async def _create_key(database_url: str, entity: str) -> tuple[str, str]:
    key = generate_key()
    storage = open_storage(database_url)
    await storage.open()
    try:
        record = await storage.create_key(entity, "test", hash_key(key))
    finally:
        await storage.close()
    return key, record.id


@pytest.fixture(scope="module")
def key(database_url: str) -> str:
    return asyncio.run(_create_key(database_url, "default"))[0]


@pytest.fixture(scope="module")
def servers(
    database_url: str, key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[pg.ServerProcess]]:
    # The key exists first, so no process creates a first key of its own.
    assert key
    running = pg.start_servers(database_url, PROCESSES, tmp_path_factory.mktemp("servers"))
    try:
        yield running
    finally:
        for server in running:
            server.stop()


@pytest.fixture
def clients(servers: list[pg.ServerProcess], key: str) -> Iterator[list[httpx.Client]]:
    opened = [server.client(key) for server in servers]
    try:
        yield opened
    finally:
        for client in opened:
            client.close()


def create_model(client: httpx.Client, name: str) -> str:
    response = client.post(
        "/preview/models", json={"project": "proc", "name": name, "base_model": "base"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def race(calls: list[Any]) -> list[httpx.Response]:
    """Run the calls at the same moment from threads; their responses in call order."""
    barrier = threading.Barrier(len(calls))
    results: list[httpx.Response | BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    responses = []
    for result in results:
        assert isinstance(result, httpx.Response), result
        responses.append(result)
    return responses


def test_same_step_registered_through_every_process_at_once_is_one_checkpoint(
    clients: list[httpx.Client],
) -> None:
    model_id = create_model(clients[0], "race-equal")
    path = f"/preview/models/{model_id}/checkpoints"
    for step in range(10):
        body = {"step": step, "metrics": {"loss": 0.5, "acc": 1}}
        # Two requests per process, all released together.
        responses = race(
            [lambda c=client, b=body: c.post(path, json=b) for client in clients for _ in range(2)]
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * (len(responses) - 1) + [201], [r.text for r in responses]
        assert len({response.json()["id"] for response in responses}) == 1
        assert all(
            response.json()["metrics"] == {"loss": 0.5, "acc": 1.0} for response in responses
        )

    page = clients[1].get(path, params={"limit": 100}).json()
    assert [item["step"] for item in page["data"]] == list(range(10))


def test_same_step_with_different_metrics_through_every_process_conflicts(
    clients: list[httpx.Client],
) -> None:
    model_id = create_model(clients[0], "race-different")
    path = f"/preview/models/{model_id}/checkpoints"
    for step in range(10):
        bodies = [{"step": step, "metrics": {"loss": float(index % 2)}} for index in range(6)]
        responses = race(
            [
                lambda c=clients[index % PROCESSES], b=body: c.post(path, json=b)
                for index, body in enumerate(bodies)
            ]
        )
        created = [r for r in responses if r.status_code == 201]
        assert len(created) == 1, [r.text for r in responses]
        winner = created[0].json()
        for body, response in zip(bodies, responses, strict=True):
            if response is created[0]:
                continue
            if body["metrics"] == winner["metrics"]:
                assert response.status_code == 200 and response.json()["id"] == winner["id"]
            else:
                assert response.status_code == 409, response.text
                assert isinstance(response.json()["detail"], str)

    page = clients[2].get(path, params={"limit": 100}).json()
    assert [item["step"] for item in page["data"]] == list(range(10))


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_walk_with_limit_7_stays_exact_while_other_processes_insert_and_delete(
    clients: list[httpx.Client], order: str
) -> None:
    """Each page comes from another process; between pages the other two delete the cursor itself,
    delete and insert ahead of it, and insert behind it. Every page must be exactly what a
    reference model of the live steps says it is."""
    model_id = create_model(clients[0], f"walk-{order}")
    path = f"/preview/models/{model_id}/checkpoints"
    live: dict[int, str] = {}
    for step in range(0, 1000, 10):
        response = clients[step % PROCESSES].post(path, json={"step": step, "metrics": {}})
        assert response.status_code == 201, response.text
        live[step] = response.json()["id"]

    descending = order == "desc"
    ahead = -1 if descending else 1  # the direction the walk moves in, as a step delta
    seen: list[int] = []
    cursor: tuple[int, str] | None = None
    for page_number in range(1000):
        reader = clients[page_number % PROCESSES]
        query: dict[str, Any] = {"limit": 7, "order": order}
        if cursor is not None:
            query["after"] = cursor[1]
        response = reader.get(path, params=query)
        assert response.status_code == 200, response.text
        page = response.json()

        remaining = sorted(
            (
                step
                for step in live
                if cursor is None or (step < cursor[0] if descending else step > cursor[0])
            ),
            reverse=descending,
        )
        assert [item["step"] for item in page["data"]] == remaining[:7]
        assert [item["id"] for item in page["data"]] == [live[s] for s in remaining[:7]]
        assert page["has_more"] is (len(remaining) > 7)
        seen.extend(item["step"] for item in page["data"])
        if not page["has_more"]:
            break

        last = page["data"][-1]
        cursor = (last["step"], last["id"])
        writer, deleter = (
            clients[(page_number + 1) % PROCESSES],
            clients[(page_number + 2) % PROCESSES],
        )
        # Delete the cursor itself and one step ahead of it; insert ahead of and behind it.
        upcoming = [s for s in remaining[7:] if s != cursor[0]]
        doomed = [cursor[0], *upcoming[1:2]]
        response = deleter.request("DELETE", path, json={"steps": doomed})
        assert response.status_code == 200, response.text
        assert response.json() == {"deleted_count": len(doomed), "not_found_steps": []}
        for step in doomed:
            del live[step]
        for step in (cursor[0] + 5 * ahead, cursor[0] - 3 * ahead):
            if step >= 0 and step not in live:
                response = writer.post(path, json={"step": step, "metrics": {}})
                assert response.status_code == 201, response.text
                live[step] = response.json()["id"]
    else:
        pytest.fail("the walk did not end")

    assert seen == sorted(set(seen), reverse=descending), "a step came twice or out of order"


def test_deleting_a_model_through_one_process_is_seen_by_the_others_at_once(
    clients: list[httpx.Client],
) -> None:
    model_id = create_model(clients[0], "to-delete")
    path = f"/preview/models/{model_id}/checkpoints"
    assert clients[0].post(path, json={"step": 1, "metrics": {}}).status_code == 201
    for client in clients:  # every process has served the model (and warmed any cache)
        assert client.get(path).status_code == 200
        assert client.get(f"/preview/models/{model_id}").status_code == 200

    response = clients[0].delete(f"/preview/models/{model_id}")
    assert response.status_code == 200
    assert response.json()["deleted_checkpoints"] == 1

    for client in clients[1:]:
        for response in (
            client.get(path),
            client.get(f"/preview/models/{model_id}"),
            client.post(path, json={"step": 2, "metrics": {}}),
        ):
            assert response.status_code == 404, response.text
            assert response.json() == {"detail": "Model not found"}


def test_a_key_revoked_by_the_cli_is_refused_by_every_process_at_once(
    servers: list[pg.ServerProcess], database_url: str, tmp_path: Path
) -> None:
    key, key_id = asyncio.run(_create_key(database_url, "revokee"))
    clients = [server.client(key) for server in servers]
    try:
        for client in clients:  # each process now has the key in its cache
            for _ in range(3):
                assert client.get("/preview/models").status_code == 200

        revoke = subprocess.run(
            [
                sys.executable,
                "-m",
                "ckpt_registry.cli",
                "keys",
                "revoke",
                "--database-url",
                database_url,
                key_id,
            ],
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert revoke.returncode == 0, revoke.stderr

        for client in clients:
            response = client.get("/preview/models")
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
    finally:
        for client in clients:
            client.close()
