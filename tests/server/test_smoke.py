"""A quick end-to-end check that the server answers (the detailed rules live in their own modules)."""

from __future__ import annotations

import httpx


def test_register_then_list(api: httpx.Client, model_id: str) -> None:
    response = api.post(f"/preview/models/{model_id}/checkpoints", json={"step": 3, "metrics": {"a": 1}})
    assert response.status_code == 201
    page = api.get(f"/preview/models/{model_id}/checkpoints").json()
    assert page["data"] == [{"id": response.json()["id"], "step": 3, "metrics": {"a": 1.0}}]
