"""Bad input is refused with a 4xx, never a 5xx, and never changes what is stored (CONTRACT §5)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer

from .helpers import (
    assert_detail,
    assert_validation_error,
    create_model,
    register,
    snapshot,
)

MIB = 1024 * 1024


@pytest.fixture
def seeded(api: httpx.Client, model_id: str) -> Iterator[str]:
    """A model with a few checkpoints; the test fails if its request changed anything stored."""
    for step in (0, 5, 10):
        register(api, model_id, step, {"loss": 1.0 / (step + 1)})
    create_model(api, "bystander")
    before = snapshot(api)
    yield model_id
    assert snapshot(api) == before, "a refused request changed stored data"


def checkpoints(model_id: str) -> str:
    return f"/preview/models/{model_id}/checkpoints"


def post_raw(api: httpx.Client, path: str, content: bytes, method: str = "POST") -> httpx.Response:
    return api.request(method, path, content=content, headers={"Content-Type": "application/json"})


# Register bodies as raw JSON text, so NaN, Infinity and 1e999 reach the server as a client sends them.
BAD_REGISTER_BODIES: dict[str, tuple[str, list[str | int] | None]] = {
    "not json": ("this is not json", None),
    "truncated json": ('{"step": 1, "metrics": {', None),
    "empty body": ("", None),
    "json array": ("[1, 2]", ["body"]),
    "json null": ("null", ["body"]),
    "json string": ('"step"', ["body"]),
    "missing step": ('{"metrics": {}}', ["body", "step"]),
    "step as a string": ('{"step": "5"}', ["body", "step"]),
    "step as a float": ('{"step": 5.0}', ["body", "step"]),
    "step as a fraction": ('{"step": 5.5}', ["body", "step"]),
    "step as a boolean": ('{"step": true}', ["body", "step"]),
    "step null": ('{"step": null}', ["body", "step"]),
    "step negative": ('{"step": -1}', ["body", "step"]),
    "step 2**63": ('{"step": 9223372036854775808}', ["body", "step"]),
    "step 2**64": ('{"step": 18446744073709551616}', ["body", "step"]),
    "step huge": ('{"step": 1' + "0" * 400 + "}", ["body", "step"]),
    "step as a list": ('{"step": [5]}', ["body", "step"]),
    "metrics as a list": ('{"step": 1, "metrics": [1]}', ["body", "metrics"]),
    "metrics as a string": ('{"step": 1, "metrics": "loss"}', ["body", "metrics"]),
    "metrics null": ('{"step": 1, "metrics": null}', ["body", "metrics"]),
    "metric NaN": ('{"step": 1, "metrics": {"m": NaN}}', ["body", "metrics", "*"]),
    "metric Infinity": ('{"step": 1, "metrics": {"m": Infinity}}', ["body", "metrics", "*"]),
    "metric -Infinity": ('{"step": 1, "metrics": {"m": -Infinity}}', ["body", "metrics", "*"]),
    "metric 1e999": ('{"step": 1, "metrics": {"m": 1e999}}', ["body", "metrics", "*"]),
    "metric -1e999": ('{"step": 1, "metrics": {"m": -1e999}}', ["body", "metrics", "*"]),
    "metric as a string": ('{"step": 1, "metrics": {"m": "1.0"}}', ["body", "metrics", "*"]),
    "metric true": ('{"step": 1, "metrics": {"m": true}}', ["body", "metrics", "*"]),
    "metric false": ('{"step": 1, "metrics": {"m": false}}', ["body", "metrics", "*"]),
    "metric null": ('{"step": 1, "metrics": {"m": null}}', ["body", "metrics", "*"]),
    "metric nested": ('{"step": 1, "metrics": {"m": {"x": 1}}}', ["body", "metrics", "*"]),
    "metric list": ('{"step": 1, "metrics": {"m": [1]}}', ["body", "metrics", "*"]),
    "metric name empty": ('{"step": 1, "metrics": {"": 1}}', None),
    "metric name 257 characters": (
        '{"step": 1, "metrics": {"' + "n" * 257 + '": 1}}',
        ["body", "metrics", "*", "[key]"],
    ),
    # Text every database can store: PostgreSQL refuses NUL and UTF-8 has no lone surrogates.
    "metric name with NUL": ('{"step": 1, "metrics": {"a\\u0000b": 1}}', None),
    "metric name a lone surrogate": ('{"step": 1, "metrics": {"\\ud800": 1}}', None),
    "1001 metrics": (
        json.dumps({"step": 1, "metrics": {f"m{i}": i for i in range(1001)}}),
        ["body", "metrics"],
    ),
}


@pytest.mark.parametrize("case", BAD_REGISTER_BODIES, ids=str)
def test_a_bad_registration_is_422(api: httpx.Client, seeded: str, case: str) -> None:
    body, loc = BAD_REGISTER_BODIES[case]

    response = post_raw(api, checkpoints(seeded), body.encode())

    assert_validation_error(response, loc)


def test_a_registration_that_is_not_utf8_is_refused(api: httpx.Client, seeded: str) -> None:
    response = post_raw(api, checkpoints(seeded), b'{"step": 1, "metrics": {"\xff\xfe": 1}}')
    assert 400 <= response.status_code < 500, response.text
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "body",
    [
        '{"project": "p", "name": "a\\u0000b", "base_model": "b"}',
        '{"project": "p\\u0000", "name": "n", "base_model": "b"}',
        '{"project": "p", "name": "\\udfff", "base_model": "b"}',
        '{"project": "p", "name": "n", "base_model": "\\ud800x"}',
        '{"entity": "\\ud800", "project": "p", "name": "n", "base_model": "b"}',
        '{"project": "p", "name": "", "base_model": "b"}',
        '{"project": "p", "name": "n", "base_model": "b", "return_existing": 1}',
        '{"project": "p", "name": "n", "base_model": "b", "return_existing": "true"}',
    ],
)
@pytest.mark.usefixtures("seeded")
def test_a_bad_model_is_422(api: httpx.Client, body: str) -> None:
    assert_validation_error(post_raw(api, "/preview/models", body.encode()))


def test_the_limits_themselves_are_accepted(api: httpx.Client, model_id: str) -> None:
    metrics = {f"{i:0256}": float(i) for i in range(1000)}  # 1,000 names of 256 characters

    response = api.post(checkpoints(model_id), json={"step": 2**63 - 1, "metrics": metrics})

    assert response.status_code == 201, response.text[:500]
    assert response.json()["metrics"] == metrics


BAD_DELETE_BODIES: dict[str, str] = {
    "not json": "steps=1,2",
    "json array": "[1, 2]",
    "missing steps": "{}",
    "steps null": '{"steps": null}',
    "steps a number": '{"steps": 1}',
    "steps a string": '{"steps": "1"}',
    "a string step": '{"steps": ["1"]}',
    "a float step": '{"steps": [1.0]}',
    "a boolean step": '{"steps": [true]}',
    "a null step": '{"steps": [null]}',
    "a step over 2**63-1": '{"steps": [9223372036854775808]}',
    "NaN step": '{"steps": [NaN]}',
    "10,001 steps": json.dumps({"steps": [0] * 10_001}),
}


@pytest.mark.parametrize("case", BAD_DELETE_BODIES, ids=str)
def test_a_bad_delete_is_422(api: httpx.Client, seeded: str, case: str) -> None:
    response = post_raw(api, checkpoints(seeded), BAD_DELETE_BODIES[case].encode(), "DELETE")
    assert_validation_error(response)


def big_registration(size: int) -> bytes:
    """A valid registration padded with blanks to exactly `size` bytes."""
    body = b'{"step": 99, "metrics": {"loss": 0.5}}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/checkpoints"), ("DELETE", "/checkpoints"), ("POST", ""), ("PATCH", "/x")],
)
def test_a_body_over_one_mib_is_413_and_stores_nothing(
    api: httpx.Client, seeded: str, chunked: bool, method: str, path: str
) -> None:
    body = big_registration(MIB + 1)
    content: bytes | Iterator[bytes] = chunks(body) if chunked else body
    target = "/preview/models" if path == "" else f"/preview/models/{seeded}{path}"

    response = api.request(
        method, target, content=content, headers={"Content-Type": "application/json"}
    )

    assert_detail(response, 413)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_one_mib_is_accepted(
    api: httpx.Client, model_id: str, chunked: bool
) -> None:
    body = big_registration(MIB)
    content: bytes | Iterator[bytes] = chunks(body) if chunked else body

    response = api.post(
        checkpoints(model_id), content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 201, response.text


WEIRD_MODEL_IDS = {
    "NUL": "%00",
    "NUL inside a uuid": "00000000-0000-4000-8000-%0000000000000",
    "very long": "a" * 8000,
    "unicode": "%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C",
    "emoji": "%F0%9F%98%80",
    "encoded dots": "%2E%2E",
    "blank": "%20",
    "newline": "%0A",
    "percent": "%25",
    "sql": "%27%20OR%20%271%27%3D%271",
    "nil uuid": "00000000-0000-0000-0000-000000000000",
}


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("DELETE", "", None),
        ("GET", "/checkpoints", None),
        ("GET", "/checkpoints?limit=1&order=desc", None),
        ("POST", "/checkpoints", {"step": 1}),
        ("DELETE", "/checkpoints", {"steps": [0]}),
        ("GET", "/checkpoints/00000000-0000-4000-8000-000000000000", None),
    ],
)
def test_weird_model_ids_are_not_found(
    server: RunningServer, api: httpx.Client, seeded: str, method: str, suffix: str, body: Any
) -> None:
    ids = {**WEIRD_MODEL_IDS, "uppercase form of a real id": seeded.upper()}
    for name, model_id in ids.items():
        # A raw URL, so the client sends the path exactly as written.
        target = httpx.URL(f"{server.url}/preview/models/{model_id}{suffix}")
        response = api.request(method, target, json=body)
        assert response.status_code == 404, f"{name}: {response.status_code} {response.text}"
        assert response.json() == {"detail": "Model not found"}, name


@pytest.mark.usefixtures("seeded")
def test_an_encoded_slash_in_a_model_id_is_404(server: RunningServer, api: httpx.Client) -> None:
    # The router sees the decoded path, so this is no model route at all: a plain 404, not 5xx.
    for suffix in ("", "/checkpoints"):
        target = httpx.URL(f"{server.url}/preview/models/..%2F..%2Fetc%2Fpasswd{suffix}")
        for method in ("GET", "DELETE"):
            assert_detail(api.request(method, target), 404)


WEIRD_AFTERS = {
    "NUL": "\x00",
    "a real id then NUL": None,  # filled in from the model
    "4 KB": "a" * 4_000,  # longer URLs are 414 (test_limits.py)
    "unicode": "модель",
    "emoji": "😀",
    "blank": " ",
    "percent": "%",
    "sql": "' OR '1'='1",
    "a uuid with newline": "00000000-0000-4000-8000-000000000000\n",
}


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_weird_after_values_are_422(api: httpx.Client, seeded: str, order: str) -> None:
    real = api.get(checkpoints(seeded)).json()["first_id"]
    for name, after in WEIRD_AFTERS.items():
        cursor = after if after is not None else real + "\x00"
        response = api.get(checkpoints(seeded), params={"after": cursor, "order": order})
        assert response.status_code == 422, f"{name}: {response.text}"
        assert_validation_error(response, ["query", "after"])


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=1.5", "limit"),
        ("limit=-5", "limit"),
        ("limit=%00", "limit"),
        ("limit=%EF%BC%95", "limit"),  # a full-width digit five
        ("order=ASC", "order"),
        ("order=%00", "order"),
        ("order=asc%00", "order"),
    ],
)
def test_bad_list_queries_are_422(
    server: RunningServer, api: httpx.Client, seeded: str, query: str, loc: str
) -> None:
    for path in (checkpoints(seeded), "/preview/models"):
        response = api.get(httpx.URL(f"{server.url}{path}?{query}"))
        assert_validation_error(response, ["query", loc])


def test_repeated_query_parameters_are_never_a_5xx(
    server: RunningServer, api: httpx.Client, seeded: str
) -> None:
    for query in (
        "limit=5&limit=500",
        "order=asc&order=sideways",
        "after=x&after=y",
        "limit=2&limit=3",
    ):
        response = api.get(httpx.URL(f"{server.url}{checkpoints(seeded)}?{query}"))
        assert response.status_code in (200, 422), f"{query}: {response.text}"


# A bounded, seeded fuzz: random bodies and queries; any answer but a 5xx is fine, and a refused
# request changes nothing.
FUZZ_VALUES: list[Any] = [
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    10**40,
    0.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "5",
    "\x00",
    "ü" * 300,
    True,
    False,
    None,
    [],
    [1, "a"],
    {},
    {"nested": {"deeper": [None]}},
]


def fuzz_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 2 and roll < 0.15:
        return {fuzz_key(rng): fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 2 and roll < 0.25:
        return [fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice(FUZZ_VALUES)


def fuzz_key(rng: random.Random) -> str:
    return rng.choice(["step", "steps", "metrics", "loss", "", "x" * 257, "name", "\x00", "é"])


def fuzz_body(rng: random.Random, fields: list[str]) -> bytes:
    body = {field: fuzz_value(rng) for field in fields if rng.random() < 0.8}
    if rng.random() < 0.3:
        body[fuzz_key(rng)] = fuzz_value(rng)
    text = json.dumps(body if rng.random() < 0.9 else fuzz_value(rng), allow_nan=True)
    if rng.random() < 0.1:  # damage the JSON
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice(["", "}", "\x00", "\ufffd", "1e999"]) + text[cut + 1 :]
    return text.encode("utf-8", "surrogatepass")


def test_fuzzed_requests_never_get_a_5xx(api: httpx.Client, model_id: str) -> None:
    rng = random.Random(20261129)
    register(api, model_id, 1, {"loss": 1.0})
    state = snapshot(api)
    requests = [
        ("POST", checkpoints(model_id), ["step", "metrics"]),
        ("DELETE", checkpoints(model_id), ["steps"]),
        ("POST", "/preview/models", ["entity", "project", "name", "base_model", "return_existing"]),
        ("PATCH", checkpoints(model_id) + "/{first}", ["metrics"]),
        ("POST", checkpoints(model_id) + "/retention", ["keep_latest", "keep_best", "dry_run"]),
    ]
    for _ in range(300):
        first = next(iter(state[model_id]["checkpoints"]), {"id": "none"})["id"]
        if rng.random() < 0.3:
            path = rng.choice([checkpoints(model_id), "/preview/models"])
            params = {
                name: str(fuzz_value(rng))
                for name in ("after", "limit", "order", "project")
                if rng.random() < 0.5
            }
            if rng.random() < 0.3:
                params["after"] = first
            response = api.get(path, params=params)
        else:
            method, path, fields = rng.choice(requests)
            response = post_raw(api, path.format(first=first), fuzz_body(rng, fields), method)
        assert response.status_code < 500, f"{response.request.method} {response.request.url}"
        after = snapshot(api)
        if response.status_code >= 400:
            assert after == state, f"refused yet changed: {response.request.content[:300]!r}"
        state = after
        if model_id not in state:  # the fuzz never deletes models, so this would be a bug
            raise AssertionError("the model disappeared")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/preview/models/{model}/checkpoints/{checkpoint}/files", "after"),
        ("/preview/models", "after"),
        ("/preview/models/{model}/checkpoints/best", "metric"),
    ],
)
def test_query_text_no_database_can_hold_is_422(
    api: httpx.Client, seeded: str, path: str, name: str
) -> None:
    """Found by tests/server/test_fuzz.py: `files?after=%00` was a 500 on PostgreSQL, which refuses
    NUL in text. Query text is held to the rule body text is held to."""
    checkpoint = api.get(checkpoints(seeded)).json()["first_id"]
    url = path.format(model=seeded, checkpoint=checkpoint)
    for value in ("a\x00b", "\x00"):
        response = api.get(url, params={"metric": "loss", name: value})
        assert response.status_code == 422, f"{name}={value!r}: {response.text}"
        assert_validation_error(response, ["query", name])
