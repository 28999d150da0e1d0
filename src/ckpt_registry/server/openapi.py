"""The OpenAPI document, shaped like the W&B Training API's own (see tests/fixtures/seed-openapi.json),
with each operation's error answers derived from the rules that give them (`refusals.py`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from . import auth, bodies, errors, headlimits, limits, rate_limit, slow_clients, transfers
from .refusals import Refusal
from .schemas import ErrorDetail

# Every rule that refuses a request, in the order a request meets them. A rule added in front of the
# routes adds its `REFUSALS` here; a route added later needs nothing: the rules say where they apply.
REFUSALS: Final[tuple[Refusal, ...]] = (
    *headlimits.REFUSALS,
    *rate_limit.REFUSALS,
    *slow_clients.REFUSALS,
    *limits.REFUSALS,
    *bodies.REFUSALS,
    *auth.REFUSALS,
    *errors.REFUSALS,
    *transfers.REFUSALS,
)

HEADERS: Final[dict[str, dict[str, Any]]] = {
    "Retry-After": {
        "required": True,
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {"required": True, "description": "`Bearer`", "schema": {"type": "string"}},
}
ERROR_DETAIL_REF: Final = "#/components/schemas/ErrorDetail"
VALIDATION_ERROR_REF: Final = "#/components/schemas/HTTPValidationError"

# Our 422 bodies carry loc, msg and type only; FastAPI's default schema also lists input and ctx.
VALIDATION_ERROR_SCHEMA: dict[str, Any] = {
    "properties": {
        "loc": {
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "type": "array",
            "title": "Location",
        },
        "msg": {"type": "string", "title": "Message"},
        "type": {"type": "string", "title": "Error Type"},
    },
    "type": "object",
    "required": ["loc", "msg", "type"],
    "title": "ValidationError",
}


def _plain_optional(schema: dict[str, Any]) -> None:
    """`anyOf: [X, null]` -> X: an optional query parameter is documented as its plain type."""
    variants = schema.get("anyOf")
    if isinstance(variants, list) and len(variants) == 2 and {"type": "null"} in variants:
        (plain,) = [variant for variant in variants if variant != {"type": "null"}]
        # In `anyOf`'s place, so the fields keep the seed's order.
        fields = list(schema.items())
        schema.clear()
        for name, value in fields:
            schema.update(plain if name == "anyOf" else {name: value})


def response_name(status: int) -> str:
    return f"Error{status}"


def refusals_for(route: APIRoute, method: str) -> dict[int, list[Refusal]]:
    """The refusals whose rule applies to `method route`, by status."""
    found: dict[int, list[Refusal]] = {}
    for refusal in REFUSALS:
        if refusal.applies(route, method):
            found.setdefault(refusal.status, []).append(refusal)
    return dict(sorted(found.items()))


def _sentence(causes: Iterable[str]) -> str:
    text = "; or ".join(causes)
    return text[:1].upper() + text[1:]


def _content(refusals: list[Refusal]) -> dict[str, Any]:
    ref = VALIDATION_ERROR_REF if refusals[0].validation else ERROR_DETAIL_REF
    return {"application/json": {"schema": {"$ref": ref}}}


def _headers(refusals: Iterable[Refusal]) -> dict[str, Any]:
    names = dict.fromkeys(name for refusal in refusals for name in refusal.headers)
    return {name: HEADERS[name] for name in names}


def _response(refusals: list[Refusal]) -> dict[str, Any]:
    response = {
        "description": _sentence(refusal.cause for refusal in refusals),
        "content": _content(refusals),
    }
    headers = _headers(refusals)
    if headers:
        response["headers"] = headers
    return response


def _merged(declared: dict[str, Any], refusals: list[Refusal]) -> dict[str, Any]:
    """A status the route declares itself (system-check's 503, create's 403) that a rule also gives:
    both causes, and either body when they differ."""
    merged = copy.deepcopy(declared)
    causes = [refusal.cause for refusal in refusals]
    merged["description"] = "; or ".join([declared.get("description", ""), *causes])
    ours = _content(refusals)["application/json"]["schema"]
    content = merged.setdefault("content", {})
    theirs = content.get("application/json", {}).get("schema")
    if theirs is None:
        content["application/json"] = {"schema": ours}
    elif theirs != ours:
        content["application/json"]["schema"] = {"anyOf": [theirs, ours]}
    # Sent with the rule's refusal, not with the route's own answer: not always there.
    headers = {name: {**header, "required": False} for name, header in _headers(refusals).items()}
    if headers:
        merged["headers"] = {**headers, **merged.get("headers", {})}
    return merged


def add_error_responses(document: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    """Each operation's responses gain the refusals that apply to it (`components/responses`)."""
    by_status: dict[int, list[Refusal]] = {}
    for refusal in REFUSALS:
        by_status.setdefault(refusal.status, []).append(refusal)
    components = document.setdefault("components", {})
    components["responses"] = {
        response_name(status): _response(refusals) for status, refusals in sorted(by_status.items())
    }
    components.setdefault("schemas", {}).setdefault("ErrorDetail", ErrorDetail.model_json_schema())
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in sorted(route.methods or ()):
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:  # left out where it was included (`include_in_schema=False`)
                continue
            responses: dict[str, Any] = operation["responses"]
            for status, refusals in refusals_for(route, method).items():
                if str(status) in responses:
                    responses[str(status)] = _merged(responses[str(status)], refusals)
                else:
                    ref = f"#/components/responses/{response_name(status)}"
                    responses[str(status)] = {"$ref": ref}
            operation["responses"] = dict(sorted(responses.items()))
    document["info"]["description"] = "\n\n".join(
        [
            document["info"].get("description", ""),
            "Each operation lists the error answers it can give; those common to many operations "
            'are described once, in `components/responses`. Error bodies are `{"detail": ...}`, '
            'validation errors (422) `{"detail": [{"loc", "msg", "type"}]}`.',
        ]
    )


def install_openapi(app: FastAPI, routes: Iterable[BaseRoute]) -> None:
    """`routes` as the routers declare them (the ones `asgi_layers` reads too)."""
    routes = list(routes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", []):
                        if parameter.get("in") == "query":
                            _plain_optional(parameter["schema"])
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            if "ValidationError" in schemas:
                schemas["ValidationError"] = VALIDATION_ERROR_SCHEMA
            add_error_responses(document, routes)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
