"""`GET /v1/preview/models/{id}/summary`: what a model holds now, for the dashboard's models page."""

from __future__ import annotations

import httpx

from ..conftest import RunningServer, add_key
from .helpers import assert_detail, create_model, delete_steps, register


def test_a_summary_counts_live_checkpoints_and_files(
    api: httpx.Client, model_id: str, server: RunningServer
) -> None:
    url = f"/preview/models/{model_id}/summary"
    assert api.get(url).json() == {
        "object": "model.summary",
        "model_id": model_id,
        "checkpoints": 0,
        "latest_step": None,
        "last_update": None,
        "files": 0,
        "logical_bytes": 0,
        "stored_bytes": 0,
    }
    ids = [register(api, model_id, step, {"loss": 1.0})["id"] for step in (5, 10, 15)]
    for checkpoint, data in zip(ids, (b"x" * 100, b"x" * 100, b"y" * 7), strict=True):
        files = f"/preview/models/{model_id}/checkpoints/{checkpoint}/files"
        assert api.put(f"{files}/weights.bin", content=data).status_code == 201
    patched = api.patch(
        f"/preview/models/{model_id}/checkpoints/{ids[0]}", json={"metrics": {"eval": 2.0}}
    ).json()
    summary = api.get(url).json()
    assert (summary["checkpoints"], summary["latest_step"]) == (3, 15)
    assert summary["last_update"] == patched["updated_at"]  # a merge is an update
    assert (summary["files"], summary["logical_bytes"], summary["stored_bytes"]) == (3, 207, 107)

    delete_steps(api, model_id, [15])
    summary = api.get(url).json()
    assert (summary["checkpoints"], summary["latest_step"], summary["stored_bytes"]) == (2, 10, 100)

    with server.client(add_key(server.database_url, "other")) as other:
        theirs = create_model(other, "theirs")
        assert_detail(api.get(f"/preview/models/{theirs}/summary"), 404, "Model not found")
        assert_detail(other.get(url), 404, "Model not found")
    assert_detail(
        api.get("/preview/models/00000000-0000-4000-8000-000000000000/summary"),
        404,
        "Model not found",
    )
