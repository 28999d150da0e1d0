"""`GET /metrics`: after a run through every route, the Prometheus text counts each route by its
template, times it, counts bytes, registrations and collector passes, and never holds a model id,
a key or an entity; with `ckpt serve --workers 2` a scrape adds up both workers."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ckpt_registry.contract import CHECKPOINTS_PATH
from ckpt_registry.server import Settings
from ckpt_registry.server.app import ROUTERS
from tests import pg
from tests.conftest import RunningServer, add_key, serving

from .helpers import drive_every_route, register

MODEL = {"project": "p", "name": "m", "base_model": "b"}
Samples = dict[str, list[tuple[dict[str, str], float]]]

# Every label any of our series may carry; each from a fixed set.
LABELS = {"method", "route", "status", "direction", "kind", "outcome", "what", "state", "le"}


def scrape(url: str) -> tuple[str, Samples]:
    """The exposition text at `url` and its samples by name (`ckpt_*` series only)."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("ckpt_"):
                samples[sample.name].append((sample.labels, sample.value))
    return response.text, samples


def root(server_url: str) -> str:
    return server_url.removesuffix("/v1")


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for found, v in samples[name] if labels.items() <= found.items())


def route_templates() -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        for method in route.methods  # type: ignore[attr-defined]
    }


def test_every_route_is_counted_by_its_template_and_no_id_or_key_is_a_label(
    server: RunningServer, api: httpx.Client, api_key: str
) -> None:
    made = drive_every_route(api)
    assert api.get("/no/such/route").status_code == 404

    text, samples = scrape(root(server.url) + "/metrics")

    counted = {
        (labels["method"], labels["route"]) for labels, _ in samples["ckpt_http_requests_total"]
    }
    assert route_templates() <= counted, route_templates() - counted
    assert ("GET", "unmatched") in counted
    for name, series in samples.items():
        for labels, _ in series:
            assert set(labels) <= LABELS, (name, labels)
    for secret in (*made.values(), api_key, api_key[-12:], "default"):
        assert secret not in text
    assert value(samples, "ckpt_http_requests_total", method="POST", route=CHECKPOINTS_PATH) == 2
    assert value(samples, "ckpt_checkpoints_registered_total") == 2
    # The one request no route matched (the Hub's refusals are 404s of their own routes).
    assert value(samples, "ckpt_http_requests_total", route="unmatched", status="404") == 1
    timed = value(
        samples,
        "ckpt_http_request_duration_seconds_count",
        method="GET",
        route=CHECKPOINTS_PATH,
    )
    assert timed == 1
    # The 8,000-byte file went up three times (PUT, the resumable upload) and down once.
    assert value(samples, "ckpt_http_body_bytes_total", direction="up") >= 2 * 8000
    assert value(samples, "ckpt_http_body_bytes_total", direction="down") >= 8000
    assert value(samples, "ckpt_gc_runs_total", outcome="ok") == 1  # the pass at start
    assert value(samples, "ckpt_blob_store_errors_total") == 0


def test_a_blob_missing_from_the_store_is_counted(
    server: RunningServer, api: httpx.Client, blob_url: str
) -> None:
    model = drive_every_route(api)["model"]  # leaves nothing; make one file and lose its blob
    assert api.get(f"/preview/models/{model}").status_code == 404
    fresh = api.post("/preview/models", json={"project": "p", "name": "m", "base_model": "b"})
    checkpoint = register(api, fresh.json()["id"], 1)["id"]
    url = f"/preview/models/{fresh.json()['id']}/checkpoints/{checkpoint}/files/lost.bin"
    assert api.put(url, content=b"soon gone").status_code == 201
    for blob in Path(blob_url).rglob("*"):
        if blob.is_file() and blob.stat().st_size == len(b"soon gone"):
            blob.unlink()

    assert api.get(url).status_code >= 500

    _, samples = scrape(root(server.url) + "/metrics")
    assert value(samples, "ckpt_blob_store_errors_total", kind="missing") == 1


@pytest.fixture
def no_metrics_server(settings: Settings) -> Iterator[RunningServer]:
    with serving(settings.model_copy(update={"metrics": "off"})) as running:
        yield running


def test_metrics_off_serves_no_metrics_and_requests_still_carry_ids(
    no_metrics_server: RunningServer, api_key: str
) -> None:
    assert httpx.get(root(no_metrics_server.url) + "/metrics").status_code == 404
    with no_metrics_server.client(api_key) as api:
        answered = api.get("/preview/models", headers={"X-Request-ID": "trace-42"})
    assert answered.headers["x-request-id"] == "trace-42"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_postgresql_pool_is_reported(server: RunningServer, api: httpx.Client) -> None:
    api.get("/preview/models")
    _, samples = scrape(root(server.url) + "/metrics")
    for _ in range(30):  # the gauges are sampled each second
        if samples["ckpt_db_pool_connections"]:
            break
        time.sleep(0.2)
        _, samples = scrape(root(server.url) + "/metrics")
    states = {labels["state"]: v for labels, v in samples["ckpt_db_pool_connections"]}
    assert set(states) == {"in_use", "waiting"}
    assert states["waiting"] == 0  # one client, twenty connections
    assert 0 <= states["in_use"] <= 1


def test_two_workers_add_up_on_the_api_port_and_on_a_metrics_port(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'ckpt.db'}"
    metrics_port = pg.free_port()
    servers = pg.start_servers(
        database_url,
        1,
        tmp_path,
        {"CKPT_WORKERS": "2", "CKPT_METRICS": str(metrics_port)},
    )
    try:
        key = add_key(database_url)
        scraped = f"http://127.0.0.1:{metrics_port}/metrics"
        health = ("ckpt_http_requests_total", {"method": "GET", "route": "/v1/health"})
        time.sleep(1.5)  # each worker publishes its tallies once a second
        before = value(scrape(scraped)[1], health[0], **health[1])  # start_servers' polls
        with servers[0].client(key) as api:
            drive_every_route(api)
            # New connections, so that both workers take some of them.
            for _ in range(40):
                assert httpx.get(servers[0].url + "/health").status_code == 200
        time.sleep(1.5)  # each worker publishes its tallies once a second
        text, samples = scrape(scraped)
        assert value(samples, "ckpt_checkpoints_registered_total") == 2
        # 40, and the one in the run through every route, whichever worker answered each.
        assert value(samples, health[0], **health[1]) == before + 41
        assert key not in text
        # The API port does not serve them when they have a port of their own.
        assert httpx.get(f"http://127.0.0.1:{servers[0].port}/metrics").status_code == 404
    finally:
        servers[0].stop()


@pytest.fixture
def collecting_server(settings: Settings) -> Iterator[RunningServer]:
    quick = {"gc_interval_seconds": 0.2, "tombstone_ttl_seconds": 0.01}
    with serving(settings.model_copy(update=quick)) as running:
        yield running


def test_collector_passes_and_what_they_remove_are_counted(
    collecting_server: RunningServer, api_key: str
) -> None:
    with collecting_server.client(api_key) as api:
        model = api.post("/preview/models", json={"project": "p", "name": "gc", "base_model": "b"})
        model_id = model.json()["id"]
        for step in (1, 2, 3):
            register(api, model_id, step)
        api.request("DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": [1, 2]})
    url = root(collecting_server.url) + "/metrics"
    deadline = time.monotonic() + 20
    while True:
        _, samples = scrape(url)
        if value(samples, "ckpt_gc_removed_total", what="tombstones") >= 2:
            break
        assert time.monotonic() < deadline, samples["ckpt_gc_removed_total"]
        time.sleep(0.1)
    assert value(samples, "ckpt_gc_runs_total", outcome="ok") >= 2
    assert value(samples, "ckpt_gc_runs_total", outcome="failed") == 0


def test_one_worker_serves_its_metrics_on_their_own_port(settings: Settings, api_key: str) -> None:
    port = pg.free_port()
    with serving(settings.model_copy(update={"metrics": str(port)})) as server:
        with server.client(api_key) as api:
            register(api, api.post("/preview/models", json=MODEL).json()["id"], 1)
        _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "ckpt_checkpoints_registered_total") == 1
        assert httpx.get(root(server.url) + "/metrics").status_code == 404
    with pytest.raises(httpx.TransportError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
