"""Each fast path serves exactly one route of the app: the same method and path, the same query
parameters and limits, the same body limit. A change made in one place only fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from fastapi import FastAPI
from starlette.routing import compile_path

from ckpt_registry.server import Settings, create_app, schemas
from ckpt_registry.server.fastpath import ListCheckpointsFastPath, parse_query
from ckpt_registry.server.fastregister import RegisterCheckpointFastPath, plain_registration
from ckpt_registry.server.headlimits import HeadLimits
from ckpt_registry.server.limits import BodySizeLimit
from ckpt_registry.server.observe import RequestLayer
from ckpt_registry.server.rate_limit import RateLimit

from .helpers import unstacked

FAST_PATHS = [ListCheckpointsFastPath, RegisterCheckpointFastPath]
FastPath = type[ListCheckpointsFastPath] | type[RegisterCheckpointFastPath]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], FastAPI]:
    # Building the app opens nothing (the database opens in the lifespan), so no database is needed.
    database = Path(tmp_path_factory.mktemp("unused")) / "never-opened.db"
    return unstacked(create_app(Settings(database_url=f"sqlite:///{database}")))


def operations(api: FastAPI) -> dict[tuple[str, str], dict[str, Any]]:
    """Every `(METHOD, path template)` the app serves, from its OpenAPI document."""
    document: dict[str, Any] = api.openapi()
    return {
        (method.upper(), path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def operation(api: FastAPI, fast_path: FastPath) -> dict[str, Any]:
    served = operations(api).get((fast_path.method, fast_path.route.template))
    assert served is not None, f"{fast_path.__name__} serves no route of the app"
    return served


def routed(api: FastAPI, method: str, path: str) -> list[tuple[str, dict[str, str]]]:
    """The templates of every operation `method path` would match, by the router's own compiler."""
    found = []
    for operation_method, template in operations(api):
        match = compile_path(template)[0].match(path)
        if operation_method == method and match:
            found.append((template, match.groupdict()))
    return found


def test_the_stack_holds_each_fast_path_and_lists_first(stack: tuple[list[Any], FastAPI]) -> None:
    layers, _ = stack
    kinds = [type(layer) for layer in layers]
    assert set(FAST_PATHS) <= set(kinds)
    # The list fast path is the hot path: only what every request needs (its id, its metrics; a
    # measured cost, README "Operating it"; the limits on its head) may run in front of it.
    assert kinds[: kinds.index(ListCheckpointsFastPath)] == [RequestLayer, HeadLimits]


def test_the_rate_limit_when_on_sits_in_front_of_the_fast_paths(tmp_path: Path) -> None:
    """No request that presents a key may reach a fast path past the per-key limit; when the limit
    is off (the default) the layer is not there at all."""
    database = f"sqlite:///{tmp_path / 'never-opened.db'}"
    layers, _ = unstacked(create_app(Settings(database_url=database, rate_limit="10/s")))
    kinds = [type(layer) for layer in layers]
    assert kinds[: kinds.index(ListCheckpointsFastPath)] == [RequestLayer, HeadLimits, RateLimit]


@pytest.mark.parametrize("fast_path", FAST_PATHS, ids=lambda cls: cls.__name__)
def test_a_fast_path_takes_exactly_the_requests_its_route_would(
    stack: tuple[list[Any], FastAPI], fast_path: FastPath
) -> None:
    _, api = stack
    operation(api, fast_path)
    template = fast_path.route.template
    real_id = "0b9e6c1e-5a4b-4c3d-9e8f-7a6b5c4d3e2f"
    prefix, suffix = template.split("{model_id}")
    paths = [
        *(prefix + model_id + suffix for model_id in (real_id, "x", "a b", "", "a/b", "..")),
        prefix + real_id + suffix + "/",
        prefix + real_id + suffix + "/best",
        prefix + real_id,
        prefix.rstrip("/"),
        "/v2" + (prefix + real_id + suffix).removeprefix("/v1"),
        (prefix + real_id + suffix).replace("/preview", ""),
    ]
    for path in paths:
        taken = fast_path.route.match(path)
        if taken is None:
            assert (template, {"model_id": ANY}) not in routed(api, fast_path.method, path), path
        else:
            # The request reaches this route and no other, with the same model id.
            assert routed(api, fast_path.method, path) == [(template, {"model_id": taken})], path


def test_the_list_fast_path_accepts_what_its_route_declares(
    stack: tuple[list[Any], FastAPI],
) -> None:
    _, api = stack
    parameters = {
        parameter["name"]: parameter["schema"]
        for parameter in operation(api, ListCheckpointsFastPath)["parameters"]
        if parameter["in"] == "query"
    }
    # The parameters `parse_query` reads; a new one on the route must be taught to the fast path.
    assert set(parameters) == {"after", "limit", "order"}
    limit, order = parameters["limit"], parameters["order"]

    assert parse_query(b"") == (None, limit["default"], order["default"])
    assert parse_query(b"after=abc") == ("abc", limit["default"], order["default"])
    for accepted in (limit["minimum"], limit["maximum"]):
        query = parse_query(f"limit={accepted}".encode())
        assert query is not None and query[1] == accepted
    for refused in (limit["minimum"] - 1, limit["maximum"] + 1):
        # The route answers 422 here; the fast path must leave it to the route.
        assert parse_query(f"limit={refused}".encode()) is None
    for value in order["enum"]:
        query = parse_query(f"order={value}".encode())
        assert query is not None and query[2] == value
    assert parse_query(b"order=sideways") is None


def test_the_register_fast_path_accepts_only_what_its_route_accepts(
    stack: tuple[list[Any], FastAPI],
) -> None:
    _, api = stack
    body = operation(api, RegisterCheckpointFastPath)["requestBody"]["content"]["application/json"]
    # The route's body model by the name the document gives it; its own JSON schema, since the
    # document's numbers pass through floats (2**63 - 1 would read as 2**63).
    model = getattr(schemas, body["schema"]["$ref"].rsplit("/", 1)[1])
    schema = model.model_json_schema()["properties"]
    step, metrics = schema["step"], schema["metrics"]
    names = metrics["propertyNames"]

    for accepted in (step["minimum"], step["maximum"]):
        assert plain_registration(b'{"step": %d}' % accepted) == (accepted, {})
    for refused in (step["minimum"] - 1, step["maximum"] + 1):
        assert plain_registration(b'{"step": %d}' % refused) is None

    def registration(count: int, length: int) -> bytes:
        return b'{"step": 1, "metrics": {%s}}' % b", ".join(
            b'"%s": 1' % f"{i:0{length}}".encode() for i in range(count)
        )

    most, longest = metrics["maxProperties"], names["maxLength"]
    assert plain_registration(registration(most, longest)) is not None
    assert plain_registration(registration(most + 1, longest)) is None
    assert plain_registration(registration(1, longest + 1)) is None
    assert (
        names["minLength"] == 1 and plain_registration(b'{"step": 1, "metrics": {"": 1}}') is None
    )


def test_the_register_fast_path_bounds_bodies_as_its_route_is_bounded(
    stack: tuple[list[Any], FastAPI],
) -> None:
    layers, api = stack
    (register,) = [layer for layer in layers if isinstance(layer, RegisterCheckpointFastPath)]
    (body_limit,) = [layer for layer in layers if isinstance(layer, BodySizeLimit)]
    operation(api, RegisterCheckpointFastPath)
    path = RegisterCheckpointFastPath.route.template.format(model_id="m")
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}

    assert register.max_bytes == body_limit.limits.for_request(scope).max_bytes
