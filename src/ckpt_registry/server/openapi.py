"""The OpenAPI document, shaped like the W&B Training API's own (see tests/fixtures/seed-openapi.json)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

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
        del schema["anyOf"]
        schema.update(plain)


def install_openapi(app: FastAPI) -> None:
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
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
