"""Small helpers the HTTP contract tests share: register, walk, snapshot, and assert error shapes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import open_storage

Json = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # `{model}` and `{checkpoint}` are filled in with real ids
    body: Any = None

    def request(
        self, client: httpx.Client, model_id: str, checkpoint_id: str, **kwargs: Any
    ) -> httpx.Response:
        path = self.path.format(model=model_id, checkpoint=checkpoint_id)
        json = {"json": self.body} if self.body is not None else {}
        return client.request(self.method, path, **json, **kwargs)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


CHECKPOINTS = "/preview/models/{model}/checkpoints"
# Every endpoint that needs a key, with a body that would succeed.
AUTHENTICATED = [
    Endpoint("POST", "/preview/models", {"project": "p", "name": "new", "base_model": "b"}),
    Endpoint("GET", "/preview/models"),
    Endpoint("GET", "/preview/models?project=proj&limit=1&order=desc"),
    Endpoint("GET", "/preview/models/{model}"),
    Endpoint("GET", "/preview/models/{model}/summary"),
    Endpoint("DELETE", "/preview/models/{model}"),
    Endpoint("GET", CHECKPOINTS),
    Endpoint("GET", CHECKPOINTS + "?limit=1&order=desc"),
    Endpoint("GET", CHECKPOINTS + "?after={checkpoint}&limit=5"),
    Endpoint("POST", CHECKPOINTS, {"step": 2, "metrics": {"loss": 0.5}}),
    Endpoint("DELETE", CHECKPOINTS, {"steps": [1]}),
    Endpoint("GET", CHECKPOINTS + "/{checkpoint}"),
    Endpoint("PATCH", CHECKPOINTS + "/{checkpoint}", {"metrics": {"eval": 1.0}}),
    Endpoint("GET", CHECKPOINTS + "/best?metric=loss&mode=min"),
    Endpoint("GET", CHECKPOINTS + "/series?metric=loss&points=10"),
    Endpoint("GET", CHECKPOINTS + "/metrics?limit=10"),
    Endpoint("POST", CHECKPOINTS + "/retention", {"keep_latest": 0}),
]


MODEL_SCOPED = [endpoint for endpoint in AUTHENTICATED if "{model}" in endpoint.path]


def create_model(api: httpx.Client, name: str, project: str = "proj") -> str:
    response = api.post(
        "/preview/models", json={"project": project, "name": name, "base_model": "base"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def register(
    api: httpx.Client, model_id: str, step: int, metrics: dict[str, float] | None = None
) -> Json:
    response = api.post(
        f"/preview/models/{model_id}/checkpoints", json={"step": step, "metrics": metrics or {}}
    )
    assert response.status_code == 201, response.text
    body: Json = response.json()
    return body


def list_page(api: httpx.Client, model_id: str, **query: Any) -> Json:
    response = api.get(f"/preview/models/{model_id}/checkpoints", params=query)
    assert response.status_code == 200, response.text
    page: Json = response.json()
    assert_envelope(page)
    return page


def assert_envelope(page: Json) -> None:
    """The list envelope's own invariants, true of every page."""
    assert page["object"] == "list"
    data = page["data"]
    assert page["first_id"] == (data[0]["id"] if data else "")
    assert page["last_id"] == (data[-1]["id"] if data else "")
    assert isinstance(page["has_more"], bool)
    assert data or not page["has_more"], "an empty page must not claim more"


def walk(api: httpx.Client, model_id: str, *, limit: int = 20, order: str = "asc") -> list[Json]:
    """Every checkpoint, page by page, as the real client walks (after = data[-1].id)."""
    items: list[Json] = []
    query: dict[str, Any] = {"limit": limit, "order": order}
    for _ in range(10_000):
        page = list_page(api, model_id, **query)
        items.extend(page["data"])
        if not page["has_more"] or not page["data"]:
            return items
        query["after"] = page["data"][-1]["id"]
    raise AssertionError("the walk never ended")


def delete_steps(api: httpx.Client, model_id: str, steps: list[int]) -> Json:
    response = api.request(
        "DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": steps}
    )
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


def list_models(api: httpx.Client, **query: Any) -> list[Json]:
    """Every model of the caller's entity, walking all pages."""
    items: list[Json] = []
    query = {"limit": 100, **query}
    while True:
        response = api.get("/preview/models", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert_envelope(page)
        items.extend(page["data"])
        if not page["has_more"]:
            return items
        query["after"] = page["last_id"]


def snapshot(api: httpx.Client) -> dict[str, Any]:
    """Everything the entity can see: its models and each one's checkpoints (ids, steps, metrics)."""
    state: dict[str, Any] = {}
    for model in list_models(api):
        state[model["id"]] = {
            "model": model,
            "checkpoints": walk(api, model["id"], limit=100),
        }
    return state


def assert_validation_error(response: httpx.Response, loc: list[str | int] | None = None) -> None:
    """A 422 in FastAPI's HTTPValidationError shape; `loc` (when given) names the first error."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert isinstance(body["detail"], list) and body["detail"], body
    for error in body["detail"]:
        assert set(error) == {"loc", "msg", "type"}, error
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str) and isinstance(error["type"], str)
    if loc is not None:
        assert [error["loc"] for error in body["detail"]] == [loc], body


def assert_detail(response: httpx.Response, status: int, detail: str | None = None) -> None:
    """A non-validation error: `{"detail": "<message>"}` with that status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if detail is not None:
        assert body["detail"] == detail


def _run_storage(database_url: str, action: Any) -> Any:
    async def run() -> Any:
        storage = open_storage(database_url)
        await storage.open()
        try:
            return await action(storage)
        finally:
            await storage.close()

    return asyncio.run(run())


def add_key_with_id(database_url: str, entity: str = "default") -> tuple[str, str]:
    """A new key for `entity`, as `ckpt keys create` makes it: `(key_id, key)`."""
    key = generate_key()
    created = _run_storage(
        database_url, lambda storage: storage.create_key(entity, "test", hash_key(key))
    )
    return str(created.id), key


def revoke_key(database_url: str, key_id: str) -> None:
    _run_storage(database_url, lambda storage: storage.revoke_key(key_id))


def unstacked(app: Any) -> tuple[list[Any], FastAPI]:
    """The ASGI layers `create_app` put in front of the FastAPI app (outermost first), and the app."""
    layers: list[Any] = []
    while not isinstance(app, FastAPI):
        layers.append(app)
        app = app.app
    return layers, app


def drive_every_route(api: httpx.Client, name: str = "every-route") -> dict[str, str]:
    """One successful request to every route of the API, files and uploads included, as a user
    would make them; returns the ids it made (`model`, `checkpoint`, `upload`)."""
    import hashlib

    data = b"weights " * 1000
    digest = hashlib.sha256(data).hexdigest()
    assert api.get("/health").status_code == 200
    assert api.get("/system-check").status_code == 200
    model = create_model(api, name)
    assert api.get("/preview/models", params={"limit": 1}).status_code == 200
    assert api.get(f"/preview/models/{model}").status_code == 200
    checkpoint = register(api, model, 1, {"loss": 0.5})["id"]
    register(api, model, 2, {"loss": 0.25})
    assert list_page(api, model, limit=1)["data"]
    assert api.get(f"/preview/models/{model}/checkpoints/{checkpoint}").status_code == 200
    assert api.get(f"/preview/models/{model}/checkpoints/steps/1").status_code == 200
    assert (
        api.patch(
            f"/preview/models/{model}/checkpoints/{checkpoint}", json={"metrics": {"eval": 1.0}}
        ).status_code
        == 200
    )
    assert (
        api.get(
            f"/preview/models/{model}/checkpoints/best", params={"metric": "loss", "mode": "min"}
        ).status_code
        == 200
    )
    assert api.get(f"/preview/models/{model}/summary").json()["checkpoints"] == 2
    series = api.get(f"/preview/models/{model}/checkpoints/series", params={"metric": "loss"})
    assert series.json()["steps"] == [1, 2]
    names = api.get(f"/preview/models/{model}/checkpoints/metrics")
    assert names.json()["data"] == ["eval", "loss"]
    origin = str(api.base_url.copy_with(path="/"))  # the dashboard, outside /v1
    assert api.get(origin).status_code == 200
    assert api.get(origin + "dashboard/app.js").status_code == 200
    files = f"/preview/models/{model}/checkpoints/{checkpoint}/files"
    assert api.put(f"{files}/model.bin", content=data).status_code == 201
    assert api.get(files).status_code == 200
    assert api.head(f"{files}/model.bin").status_code == 200
    assert api.get(f"{files}/model.bin").content == data
    # The Hub download surface (docs/hub.md), outside /v1: by name and by model id.
    hub = str(api.base_url).rstrip("/").removesuffix("/v1")
    assert api.get(f"{hub}/api/models/proj/{name}/revision/step-1").status_code == 200
    assert api.get(f"{hub}/api/models/{model}/tree/step-1").status_code == 200
    for repo in (f"proj/{name}", model):
        assert api.head(f"{hub}/{repo}/resolve/step-1/model.bin").status_code == 200
        assert api.get(f"{hub}/{repo}/resolve/step-1/model.bin").content == data
    for what in ("refs", "commits/step-1"):
        assert api.get(f"{hub}/api/models/{model}/{what}").status_code == 200
    paths_info = api.post(
        f"{hub}/api/models/{model}/paths-info/step-1",
        content=b"paths=model.bin",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert paths_info.json()[0]["path"] == "model.bin"
    assert api.get(f"{hub}/api/whoami-v2").status_code == 200
    # What the Hub surface does not serve, answered as its client reads it: a dataset's file, a
    # read elsewhere under /api, a write.
    for method in ("GET", "HEAD"):
        other = api.request(method, f"{hub}/datasets/proj/data/resolve/main/x.csv")
        assert other.status_code == 404
        assert api.request(method, f"{hub}/api/datasets/proj/data").status_code == 404
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert api.request(method, f"{hub}/api/repos/create").status_code == 405
    transfers = api.post(
        f"/preview/models/{model}/checkpoints/{checkpoint}/transfers",
        json={
            "operation": "upload",
            "files": [{"path": "copy.bin", "sha256": digest, "size_bytes": len(data)}],
        },
    )
    assert transfers.status_code == 200, transfers.text
    started = api.post(
        f"/preview/models/{model}/checkpoints/{checkpoint}/uploads", json={"path": "late.bin"}
    )
    assert started.status_code == 201, started.text
    upload = f"/preview/uploads/{started.json()['id']}"
    assert api.patch(upload, content=data, headers={"Upload-Offset": "0"}).status_code == 204
    assert api.head(upload).status_code == 200
    assert api.post(upload + "/complete", json={"sha256": digest}).status_code == 201
    cancelled = api.post(
        f"/preview/models/{model}/checkpoints/{checkpoint}/uploads", json={"path": "gone.bin"}
    )
    assert cancelled.status_code == 201, cancelled.text
    assert api.delete(f"/preview/uploads/{cancelled.json()['id']}").status_code == 204
    assert api.delete(f"{files}/model.bin").status_code == 204
    assert api.get("/preview/usage").status_code == 200
    assert api.get("/preview/key").status_code == 200
    assert (
        api.post(
            f"/preview/models/{model}/checkpoints/retention", json={"keep_latest": 1}
        ).status_code
        == 200
    )
    delete_steps(api, model, [2])
    assert api.get(f"/preview/models/{model}/checkpoints/deleted-steps").status_code == 200
    assert api.delete(f"/preview/models/{model}").status_code == 200
    return {"model": model, "checkpoint": checkpoint, "upload": started.json()["id"]}
