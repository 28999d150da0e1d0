"""`ckpt serve --log-format json --access-log`: every line is one JSON object, each request's line
has its id, method, route template, status, duration and entity, and no line ever holds a key or
the `Authorization` header, whatever endpoint was called, with a good key or a bad one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ckpt_registry.contract import CHECKPOINTS_PATH
from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.server.routes import hub
from ckpt_registry.storage import open_storage
from tests import pg
from tests.conftest import add_key

from .helpers import AUTHENTICATED, create_model, drive_every_route, register

# The Hub download surface lives outside /v1, at the paths its client uses (docs/hub.md).
HUB_ROUTES = {route.path for route in hub.router.routes}  # type: ignore[attr-defined]


@pytest.fixture
def served(database_url: str, tmp_path: Path, key: str) -> Iterator[pg.ServerProcess]:
    assert key  # made before the server starts, so it prints no first key of its own
    servers = pg.start_servers(
        database_url, 1, tmp_path, {"CKPT_LOG_FORMAT": "json", "CKPT_ACCESS_LOG": "true"}
    )
    try:
        yield servers[0]
    finally:
        servers[0].stop()


@pytest.fixture
def key(database_url: str) -> str:
    return add_key(database_url)


def log_lines(server: pg.ServerProcess) -> list[dict[str, Any]]:
    server.stop()  # every line written and flushed
    lines = server.log.read_text().splitlines()
    assert lines
    return [json.loads(line) for line in lines]


def test_no_line_holds_a_key_or_the_authorization_header_after_every_endpoint(
    key: str, served: pg.ServerProcess
) -> None:
    wrong = generate_key()  # never stored: every request with it is refused
    with served.client(key) as api:
        drive_every_route(api)
        model = create_model(api, "logged")
        checkpoint = register(api, model, 1, {"loss": 1.0})["id"]
        for endpoint in AUTHENTICATED:
            endpoint.request(api, model, checkpoint)
            endpoint.request(api, model, checkpoint, headers={"Authorization": f"Bearer {wrong}"})
        api.get("/preview/models", headers={"Authorization": key})  # no scheme: 401

    text = served.log.read_text()
    lines = log_lines(served)

    for secret in (key, key[-16:], wrong, "Bearer", "authorization"):
        assert secret not in text, secret
    access = [line for line in lines if line["logger"] == "ckpt_registry.access"]
    assert len(access) > 2 * len(AUTHENTICATED)
    for line in access:
        assert set(line) >= {"time", "level", "request_id", "method", "route", "status"}
        # A template: of the API, of the dashboard's pages, of the Hub's paths, or none.
        assert (
            line["route"].startswith(("/v1/", "/dashboard/"))
            or line["route"] in HUB_ROUTES
            or line["route"] in ("/", "unmatched")
        )
        assert model not in line["route"]  # the template, not the path
        assert isinstance(line["duration_ms"], float)
    statuses = {line["status"] for line in access}
    assert {200, 201, 401} <= statuses
    authorised = [line for line in access if line["status"] in (200, 201)]
    assert all(line["entity"] == "default" for line in authorised if "/preview/" in line["route"])
    assert any(
        line["method"] == "POST" and line["route"] == CHECKPOINTS_PATH and line["status"] == 201
        for line in access
    )


def test_a_request_id_is_kept_when_valid_made_when_not_and_echoed(
    key: str, served: pg.ServerProcess
) -> None:
    with served.client(key) as api:
        kept = api.get("/preview/models", headers={"X-Request-ID": "job-7.step:42"})
        refused = api.get("/preview/models", headers={"X-Request-ID": "two words"})
        too_long = api.get("/preview/models", headers={"X-Request-ID": "a" * 129})
        made = api.get("/preview/models")

    assert kept.headers["x-request-id"] == "job-7.step:42"
    generated = {r.headers["x-request-id"] for r in (refused, too_long, made)}
    assert len(generated) == 3
    assert "two words" not in generated and "a" * 129 not in generated
    logged = {line.get("request_id") for line in log_lines(served)}
    assert {"job-7.step:42", *generated} <= logged


def test_text_format_is_the_default(key: str, database_url: str, tmp_path: Path) -> None:
    servers = pg.start_servers(database_url, 1, tmp_path, {"CKPT_ACCESS_LOG": "true"})
    with servers[0].client(key) as api:
        api.get("/health", headers={"X-Request-ID": "plain-1"})
    servers[0].stop()
    lines = servers[0].log.read_text().splitlines()
    assert any(line.startswith("INFO:") and "GET /v1/health 200" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)


def test_no_line_holds_a_read_only_key_or_a_key_refused_early(
    database_url: str, key: str, served: pg.ServerProcess
) -> None:
    reader = generate_key()

    async def create() -> None:
        storage = open_storage(database_url)
        await storage.open()
        try:
            await storage.create_key("default", "reader", hash_key(reader), read_only=True)
        finally:
            await storage.close()

    asyncio.run(create())
    with served.client(key) as api:
        made = drive_every_route(api)
        model = create_model(api, "kept")
    with served.client(reader) as client:
        assert client.get("/preview/key").json()["read_only"] is True
        assert client.get(f"/preview/models/{model}").status_code == 200
        for endpoint in AUTHENTICATED:  # every write refused (403), every read served
            endpoint.request(client, model, made["checkpoint"])
        client.post(f"/preview/models/{model}/checkpoints", content=b"{bad")  # 415, after the key
        client.get("/preview/models", headers={f"x-{i}": "1" for i in range(200)})  # 431
        client.get("/preview/models?" + "&".join(["a=1"] * 100))  # 400

    text = served.log.read_text()
    log_lines(served)
    for secret in (key, reader, reader[-16:], hash_key(reader), "Bearer"):
        assert secret not in text, secret
