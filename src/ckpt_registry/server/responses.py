"""Response bodies encoded straight to JSON bytes; stored metrics JSON is passed through unparsed."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from ..contract import TIMESTAMP_FORMAT
from ..storage.base import Checkpoint, CheckpointPage, Model, ModelPage


class JSONBytes(Response):
    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None):
        super().__init__(orjson.dumps(content), status_code, headers)


def timestamp(moment: Any) -> str:
    return str(moment.strftime(TIMESTAMP_FORMAT))


def checkpoint_page_body(page: CheckpointPage) -> bytes:
    data = [
        {"id": id_, "step": step, "metrics": orjson.Fragment(metrics_json)}
        for id_, step, metrics_json in page.data
    ]
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "",
            "has_more": page.has_more,
        }
    )


def checkpoint_detail(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "id": checkpoint.id,
        "step": checkpoint.step,
        "metrics": orjson.Fragment(checkpoint.metrics_json),
        "created_at": timestamp(checkpoint.created_at),
        "updated_at": timestamp(checkpoint.updated_at),
        "files": checkpoint.files,
        "size_bytes": checkpoint.size_bytes,
    }


def model_response(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "entity": model.entity,
        "project": model.project,
        "name": model.name,
        "base_model": model.base_model,
        "run_id": None,
    }


def model_page(page: ModelPage) -> dict[str, Any]:
    data = [model_response(model) for model in page.data]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": page.has_more,
    }
