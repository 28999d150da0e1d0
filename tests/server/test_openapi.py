"""`/openapi.json` describes the list operation exactly as the W&B Training API does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from ckpt_registry.contract import (
    METRIC_NAMES_LIMIT_DEFAULT,
    METRIC_NAMES_LIMIT_MAX,
    SERIES_POINTS_DEFAULT,
    SERIES_POINTS_MAX,
    SERIES_POINTS_MIN,
)

SEED = json.loads((Path(__file__).parents[1] / "fixtures" / "seed-openapi.json").read_text())
LIST_PATH = "/v1/preview/models/{model_id}/checkpoints"


def referenced_schemas(node: Any, schemas: dict[str, Any], found: set[str]) -> set[str]:
    """Names of every component schema `node` refers to, transitively."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in found:
                found.add(name)
                referenced_schemas(schemas[name], schemas, found)
        for value in node.values():
            referenced_schemas(value, schemas, found)
    elif isinstance(node, list):
        for value in node:
            referenced_schemas(value, schemas, found)
    return found


@pytest.fixture
def document(server: Any) -> dict[str, Any]:
    response = httpx.get(server.url.removesuffix("/v1") + "/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def as_text(node: Any) -> str:
    return json.dumps(node, indent=2)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_list_operation_matches_the_seed(document: dict[str, Any]) -> None:
    """The parts shared/CONTRACT.md section 2 names are the seed's text; the operation lists its other
    answers (401, 404, 429, ...) like every operation (tests/server/test_error_responses.py)."""
    ours = document["paths"][LIST_PATH]["get"]
    seed = SEED["paths"][LIST_PATH]["get"]
    # `security` too: the bearer key the released client sends (section 1).
    for field in ("operationId", "tags", "summary", "parameters", "security"):
        assert as_text(ours[field]) == as_text(seed[field]), field
    for status in seed["responses"]:  # 200 and 422
        assert as_text(ours["responses"][status]) == as_text(seed["responses"][status]), status
    assert {"401", "404"} <= set(ours["responses"])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_list_operation_schemas_match_the_seed(document: dict[str, Any]) -> None:
    seed_schemas = SEED["components"]["schemas"]
    names = referenced_schemas(SEED["paths"][LIST_PATH], seed_schemas, set())
    assert names == {
        "PaginatedResponse_CheckpointResponse_",
        "CheckpointResponse",
        "HTTPValidationError",
        "ValidationError",
    }
    for name in names:
        assert as_text(document["components"]["schemas"][name]) == as_text(seed_schemas[name]), name
    assert document["components"]["securitySchemes"] == SEED["components"]["securitySchemes"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_documented_operation_is_served(document: dict[str, Any]) -> None:
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert {
        ("POST", "/v1/preview/models"),
        ("GET", "/v1/preview/models"),
        ("GET", "/v1/preview/models/{model_id}"),
        ("GET", "/v1/preview/models/{model_id}/summary"),
        ("DELETE", "/v1/preview/models/{model_id}"),
        ("GET", LIST_PATH),
        ("POST", LIST_PATH),
        ("DELETE", LIST_PATH),
        ("GET", LIST_PATH + "/best"),
        ("GET", LIST_PATH + "/series"),
        ("GET", LIST_PATH + "/metrics"),
        ("POST", LIST_PATH + "/retention"),
        ("GET", LIST_PATH + "/{checkpoint_id}"),
        ("PATCH", LIST_PATH + "/{checkpoint_id}"),
        ("GET", "/v1/health"),
        ("GET", "/v1/system-check"),
    } <= operations


def test_the_series_operation_documents_its_parameters_and_answer(document: dict[str, Any]) -> None:
    operation = document["paths"][LIST_PATH + "/series"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert parameters["metric"]["required"] is True
    assert parameters["points"]["schema"]["minimum"] == SERIES_POINTS_MIN
    assert parameters["points"]["schema"]["maximum"] == SERIES_POINTS_MAX
    assert parameters["points"]["schema"]["default"] == SERIES_POINTS_DEFAULT
    assert {"step_min", "step_max"} <= set(parameters)
    assert set(operation["responses"]) >= {"200", "401", "404", "422"}
    schema = document["components"]["schemas"]["MetricSeriesResponse"]
    assert set(schema["properties"]) == {
        "object",
        "metric",
        "count",
        "downsampled",
        "steps",
        "values",
    }
    # The dashboard's pages are no API operations.
    assert "/" not in document["paths"]
    assert not any(path.startswith("/dashboard") for path in document["paths"])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    """A generated client fills `{path}` of the files operations only if the document names it."""
    for path, item in document["paths"].items():
        named = set(re.findall(r"\{([^}]+)\}", path))
        for method, operation in item.items():
            declared = {
                parameter["name"]
                for parameter in operation.get("parameters", [])
                if parameter["in"] == "path"
            }
            assert declared == named, (method, path)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_metric_names_operation_documents_its_parameters_and_answer(
    document: dict[str, Any],
) -> None:
    operation = document["paths"][LIST_PATH + "/metrics"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert set(parameters) == {"model_id", "after", "limit"}
    assert parameters["after"]["required"] is False
    assert parameters["after"]["schema"]["type"] == "string"
    assert parameters["limit"]["schema"]["maximum"] == METRIC_NAMES_LIMIT_MAX
    assert parameters["limit"]["schema"]["default"] == METRIC_NAMES_LIMIT_DEFAULT
    assert set(operation["responses"]) >= {"200", "401", "404", "422"}
    schema = document["components"]["schemas"]["MetricNameList"]
    assert set(schema["properties"]) == {"object", "data", "has_more"}
    assert schema["properties"]["data"]["items"] == {"type": "string"}
