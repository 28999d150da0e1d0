"""Tombstones: a cursor naming a deleted checkpoint keeps working until its tombstone is purged (by
`ckpt db gc` or the server's periodic purge); then it is a 422 that says the cursor expired."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from ckpt_registry.cli.main import cli
from ckpt_registry.server import Settings

from ..conftest import RunningServer, serving


def register_steps(api: httpx.Client, model_id: str, steps: range) -> dict[int, str]:
    ids = {}
    for step in steps:
        response = api.post(
            f"/preview/models/{model_id}/checkpoints", json={"step": step, "metrics": {}}
        )
        assert response.status_code == 201, response.text
        ids[step] = response.json()["id"]
    return ids


def delete_steps(api: httpx.Client, model_id: str, steps: list[int]) -> None:
    response = api.request(
        "DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": steps}
    )
    assert response.json()["deleted_count"] == len(steps)


def page_after(api: httpx.Client, model_id: str, after: str, order: str = "asc") -> httpx.Response:
    return api.get(
        f"/preview/models/{model_id}/checkpoints",
        params={"after": after, "order": order, "limit": 100},
    )


def steps_of(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["step"] for item in response.json()["data"]]


def assert_expired(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "after"]
    assert "expired" in error["msg"]


def gc(database_url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["db", "gc", "--database-url", database_url, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_recent_tombstone_survives_gc_and_its_cursor_works(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    ids = register_steps(api, model_id, range(1, 6))
    delete_steps(api, model_id, [3])

    assert "purged 0 tombstones" in gc(server.database_url)  # the default age is 24 h

    assert steps_of(page_after(api, model_id, ids[3])) == [4, 5]
    assert steps_of(page_after(api, model_id, ids[3], "desc")) == [2, 1]


def test_gc_purges_old_tombstones_and_their_cursors_expire(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    ids = register_steps(api, model_id, range(1, 6))
    delete_steps(api, model_id, [2, 3])
    assert steps_of(page_after(api, model_id, ids[2])) == [4, 5]

    output = gc(server.database_url, "--older-than", "0")

    assert "purged 2 tombstones" in output
    for step in (2, 3):
        for order in ("asc", "desc"):
            assert_expired(page_after(api, model_id, ids[step], order))
    # Live cursors are untouched; a cursor that never named anything is not called expired.
    assert steps_of(page_after(api, model_id, ids[4])) == [5]
    unknown = page_after(api, model_id, "00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["query", "after"]
    assert "expired" not in unknown.json()["detail"][0]["msg"]
    # Purging again finds nothing and the cursors stay expired.
    assert "purged 0 tombstones" in gc(server.database_url, "--older-than", "0")
    assert_expired(page_after(api, model_id, ids[2]))


def test_gc_keeps_tombstones_younger_than_the_age(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    ids = register_steps(api, model_id, range(1, 5))
    delete_steps(api, model_id, [1])
    time.sleep(1.2)
    delete_steps(api, model_id, [2])

    assert "purged 1 tombstones" in gc(server.database_url, "--older-than", "1")

    assert_expired(page_after(api, model_id, ids[1]))
    assert steps_of(page_after(api, model_id, ids[2])) == [3, 4]


def test_an_expired_cursor_is_only_expired_in_its_own_model(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    ids = register_steps(api, model_id, range(1, 3))
    other = api.post(
        "/preview/models", json={"project": "proj", "name": "other", "base_model": "b"}
    ).json()["id"]
    delete_steps(api, model_id, [1])
    gc(server.database_url, "--older-than", "0")

    response = page_after(api, other, ids[1])

    assert response.status_code == 422
    assert "expired" not in response.json()["detail"][0]["msg"]


def test_retention_tombstones_are_purged_too(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    ids = register_steps(api, model_id, range(1, 6))
    result = api.post(
        f"/preview/models/{model_id}/checkpoints/retention", json={"keep_latest": 2}
    ).json()
    assert result["deleted_steps"] == [1, 2, 3]
    assert steps_of(page_after(api, model_id, ids[2])) == [4, 5]

    assert "purged 3 tombstones" in gc(server.database_url, "--older-than", "0")

    assert_expired(page_after(api, model_id, ids[2]))


def test_gc_reports_a_bad_database_url_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["db", "gc", "--database-url", f"sqlite:///{tmp_path}/missing.db"]
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output


def test_the_server_purges_old_tombstones_periodically(
    database_url: str, blob_url: str, api_key: str
) -> None:
    settings = Settings(
        database_url=database_url,
        blob_url=blob_url,
        gc_interval_seconds=0.2,
        tombstone_ttl_seconds=0.1,
    )
    with serving(settings) as running, running.client(api_key) as api:
        model_id = api.post(
            "/preview/models", json={"project": "p", "name": "m", "base_model": "b"}
        ).json()["id"]
        ids = register_steps(api, model_id, range(1, 4))
        delete_steps(api, model_id, [2])

        deadline = time.monotonic() + 10
        response = page_after(api, model_id, ids[2])
        while response.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            response = page_after(api, model_id, ids[2])

        assert_expired(response)
        assert steps_of(page_after(api, model_id, ids[1])) == [3]


def test_the_server_keeps_tombstones_younger_than_the_ttl(
    database_url: str, blob_url: str, api_key: str
) -> None:
    settings = Settings(
        database_url=database_url,
        blob_url=blob_url,
        gc_interval_seconds=0.1,
        tombstone_ttl_seconds=3600,
    )
    with serving(settings) as running, running.client(api_key) as api:
        model_id = api.post(
            "/preview/models", json={"project": "p", "name": "m", "base_model": "b"}
        ).json()["id"]
        ids = register_steps(api, model_id, range(1, 4))
        delete_steps(api, model_id, [2])
        time.sleep(0.5)  # several purge rounds

        assert steps_of(page_after(api, model_id, ids[2])) == [3]
