"""One rule for request bodies that cannot be read, the same on every route (server/bodies.py), and
validation errors that never repeat what the client sent, not even in `loc`."""

from __future__ import annotations

import codecs
import json
import uuid

import httpx
import pytest
from fastapi.routing import APIRoute

from ckpt_registry.server import Settings
from ckpt_registry.server.app import ROUTERS
from ckpt_registry.server.bodies import JSONBodyRoute
from tests.conftest import RunningServer, serving

from .helpers import assert_detail, assert_validation_error, register, snapshot

UNKNOWN = str(uuid.uuid4())
CHECKPOINTS = "/preview/models/{model}/checkpoints"
# Every route that takes a JSON body, with a body it would accept.
JSON_ROUTES = [
    ("POST", "/preview/models", {"project": "p", "name": "n", "base_model": "b"}),
    ("POST", CHECKPOINTS, {"step": 1, "metrics": {"loss": 1.0}}),
    ("DELETE", CHECKPOINTS, {"steps": [1]}),
    ("PATCH", CHECKPOINTS + "/{checkpoint}", {"metrics": {"loss": 1.0}}),
    ("POST", CHECKPOINTS + "/retention", {"keep_latest": 1}),
    ("POST", CHECKPOINTS + "/{checkpoint}/uploads", {"path": "a.bin"}),
    ("POST", CHECKPOINTS + "/{checkpoint}/transfers", {"operation": "download"}),
    ("POST", "/preview/uploads/{upload}/complete", {"sha256": "0" * 64}),
]

NESTED = b'{"step": 1, "metrics": ' + b"[" * 5000 + b"]" * 5000 + b"}"
UNREADABLE: dict[str, tuple[bytes, str]] = {
    "5,000-digit integer": (b'{"step": 1' + b"0" * 5000 + b"}", "number too long"),
    "nested 5,000 deep": (NESTED, "nests too deeply"),
    "invalid UTF-8": (b'{"step": 1, "metrics": {"\xff\xfe": 1}}', "not valid UTF-8"),
    "latin-1 text": ('{"step": 1, "metrics": {"é": 1}}'.encode("latin-1"), "not valid UTF-8"),
    "UTF-8 with a BOM": (codecs.BOM_UTF8 + b'{"step": 1}', "byte order mark"),
    "UTF-16": ('{"step": 1}'.encode("utf-16"), "byte order mark"),
    "UTF-16 without a BOM": ('{"step": 1}'.encode("utf-16-le"), "not valid JSON"),
    "syntax": (b'{"step": 1,', "not valid JSON"),
}


def path(template: str, ids: dict[str, str]) -> str:
    return template.format(**ids)


@pytest.fixture
def ids(api: httpx.Client, model_id: str) -> dict[str, str]:
    checkpoint = register(api, model_id, 1, {"loss": 1.0})["id"]
    return {"model": model_id, "checkpoint": checkpoint, "upload": UNKNOWN}


@pytest.mark.parametrize("case", UNREADABLE, ids=str)
def test_an_unreadable_body_is_the_same_422_on_every_route(
    api: httpx.Client, ids: dict[str, str], case: str
) -> None:
    body, message = UNREADABLE[case]
    before = snapshot(api)
    answers = set()
    for method, template, _ in JSON_ROUTES:
        response = api.request(
            method, path(template, ids), content=body, headers={"Content-Type": "application/json"}
        )
        assert_validation_error(response, ["body"])
        (error,) = response.json()["detail"]
        assert error["type"] == "json_invalid"
        assert message in error["msg"]
        answers.add(response.text)
    assert len(answers) == 1  # one rule: the very same answer everywhere
    assert snapshot(api) == before


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_a_body_that_is_not_declared_utf8_json_is_415_on_every_route(
    api: httpx.Client, ids: dict[str, str], content_type: str | None
) -> None:
    before = snapshot(api)
    for method, template, body in JSON_ROUTES:
        request = api.build_request(method, path(template, ids), content=json.dumps(body))
        if content_type is not None:
            request.headers["Content-Type"] = content_type
        response = api.send(request)
        assert_detail(
            response, 415, "Send the body as JSON with Content-Type: application/json (UTF-8)"
        )
    assert snapshot(api) == before


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8"],
)
def test_json_declared_as_utf8_is_accepted(
    api: httpx.Client, model_id: str, content_type: str
) -> None:
    response = api.post(
        f"/preview/models/{model_id}/checkpoints",
        content=json.dumps({"step": 7, "metrics": {"é": 1.0}}).encode(),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 201, response.text
    assert response.json()["metrics"] == {"é": 1.0}


BAD_METRIC_NAMES = {
    "NUL": "a\\u0000b-SECRET",
    "257 characters": "SECRET" + "n" * 251,
    "lone surrogate": "SECRET\\ud800",
    "empty": "",
}


@pytest.mark.parametrize("name", BAD_METRIC_NAMES, ids=str)
@pytest.mark.parametrize("route", ["register", "patch", "patch-value"])
def test_a_bad_metric_name_is_never_echoed(
    api: httpx.Client, ids: dict[str, str], name: str, route: str
) -> None:
    metric = BAD_METRIC_NAMES[name]
    base = path(CHECKPOINTS, ids)
    if route == "register":
        response = api.post(
            base,
            content=f'{{"step": 2, "metrics": {{"{metric}": 1}}}}'.encode(),
            headers={"Content-Type": "application/json"},
        )
    else:
        value = '"x"' if route == "patch-value" else "1"
        response = api.patch(
            f"{base}/{ids['checkpoint']}",
            content=f'{{"metrics": {{"{metric}": {value}}}}}'.encode(),
            headers={"Content-Type": "application/json"},
        )
    assert_validation_error(response)
    for error in response.json()["detail"]:
        assert error["loc"][:3] == ["body", "metrics", "*"], error
    assert "SECRET" not in response.text and "nnnn" not in response.text


def test_no_422_repeats_the_input_on_any_route(api: httpx.Client, ids: dict[str, str]) -> None:
    """A marker in every place a client can put text: no validation error carries it back."""
    mark = "M4RK3R"
    model, checkpoint = ids["model"], ids["checkpoint"]
    base = f"/preview/models/{model}/checkpoints"
    requests: list[tuple[str, str, object]] = [
        ("POST", "/preview/models", {"project": mark * 50, "name": mark, "base_model": 1}),
        ("POST", "/preview/models", {"entity": mark + "\u0000", "project": "p", "name": mark}),
        ("GET", f"/preview/models?limit={mark}&order={mark}&after={mark}", None),
        ("GET", f"{base}?limit={mark}&order={mark}&after={mark}", None),
        ("GET", f"{base}/best?metric={mark * 60}&mode={mark}", None),
        ("GET", f"{base}/steps/{mark}", None),
        ("POST", base, {"step": mark, "metrics": {mark: mark}}),
        ("PATCH", f"{base}/{checkpoint}", {"metrics": {mark: [mark]}}),
        ("DELETE", base, {"steps": [mark]}),
        ("POST", f"{base}/retention", {"keep_latest": mark, "keep_best": {"metric": mark}}),
        ("GET", f"{base}/{checkpoint}/files?limit={mark}&after={mark}", None),
        ("PUT", f"{base}/{checkpoint}/files/{mark}/%2e%2e/x", None),
        ("POST", f"{base}/{checkpoint}/uploads", {"path": f"/{mark}"}),
        ("POST", f"{base}/{checkpoint}/transfers", {"operation": mark, "files": [mark]}),
        (
            "POST",
            f"{base}/{checkpoint}/transfers",
            {"operation": "upload", "files": [{"path": mark, "sha256": mark, "size_bytes": -1}]},
        ),
        ("POST", f"/preview/uploads/{UNKNOWN}/complete", {"sha256": mark}),
    ]
    for method, url, body in requests:
        response = api.request(method, url, json=body)
        assert response.status_code == 422, (method, url, response.text)
        assert mark not in response.text, (method, url, response.text)


def test_no_redirect_is_built_from_the_host_header(server: RunningServer) -> None:
    for url in ("/preview/models/", "/health/", "/preview/usage/"):
        response = httpx.get(
            server.url + url, headers={"Host": "evil.example"}, follow_redirects=False
        )
        assert_detail(response, 404, "Not Found")
        assert "location" not in response.headers


def test_api_docs_are_off_by_default(server: RunningServer) -> None:
    root = server.url.removesuffix("/v1")
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(root + page).status_code == 404
    assert httpx.get(root + "/openapi.json").status_code == 200


def test_api_docs_can_be_turned_on(settings: Settings) -> None:
    with serving(settings.model_copy(update={"api_docs": True})) as docs_server:
        root = docs_server.url.removesuffix("/v1")
        assert "swagger" in httpx.get(root + "/docs").text.lower()
        assert httpx.get(root + "/redoc").status_code == 200


def test_every_route_applies_the_body_rule() -> None:
    routes = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
    assert routes
    assert [route.path for route in routes if not isinstance(route, JSONBodyRoute)] == []


def test_an_unreadable_body_without_a_key_is_401(
    server: RunningServer, ids: dict[str, str]
) -> None:
    with server.client(None) as anonymous:
        for method, template, _ in JSON_ROUTES:
            for headers in ({"Content-Type": "application/json"}, {"Content-Type": "text/plain"}):
                response = anonymous.request(
                    method, path(template, ids), content=UNREADABLE["syntax"][0], headers=headers
                )
                assert response.status_code == 401, response.text
