"""Read-only keys (`ckpt keys create --read-only`): they list, read and download everything of their
entity, and every write is 403 and changes nothing, on the fast paths too."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ckpt_registry.contract import KEY_PATH
from ckpt_registry.server.auth import READ_ONLY_DETAIL
from tests.cli.test_server_cli import run
from tests.conftest import RunningServer

from .helpers import assert_detail, create_model, register, snapshot

DATA = b"weights " * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


def create_key_with_cli(server: RunningServer, *flags: str) -> str:
    code, out, _ = run(
        "keys", "create", "--entity", "default", "--database-url", server.database_url, *flags
    )
    assert code == 0
    return out.strip().splitlines()[-1]


@pytest.fixture
def reader(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(create_key_with_cli(server, "--name", "inference", "--read-only")) as client:
        yield client


@pytest.fixture
def made(api: httpx.Client) -> dict[str, str]:
    """A model with two checkpoints, a file and an upload in progress, made with a read-write key."""
    model = create_model(api, "served")
    checkpoint = register(api, model, 1, {"loss": 0.5})["id"]
    register(api, model, 2, {"loss": 0.25})
    files = f"/preview/models/{model}/checkpoints/{checkpoint}/files"
    assert api.put(f"{files}/model.bin", content=DATA).status_code == 201
    started = api.post(
        f"/preview/models/{model}/checkpoints/{checkpoint}/uploads", json={"path": "late.bin"}
    )
    assert started.status_code == 201
    return {"model": model, "checkpoint": checkpoint, "upload": started.json()["id"]}


def writes(made: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    model, checkpoint, upload = made["model"], made["checkpoint"], made["upload"]
    base = f"/preview/models/{model}/checkpoints"
    files = f"{base}/{checkpoint}/files"
    return [
        ("POST", "/preview/models", {"json": {"project": "p", "name": "n", "base_model": "b"}}),
        # A body the registration fast path takes: it must refuse too, not register.
        ("POST", base, {"json": {"step": 3, "metrics": {"loss": 0.1}}}),
        ("PATCH", f"{base}/{checkpoint}", {"json": {"metrics": {"eval": 1.0}}}),
        ("DELETE", base, {"json": {"steps": [1]}}),
        ("POST", f"{base}/retention", {"json": {"keep_latest": 1}}),
        ("POST", f"{base}/retention", {"json": {"keep_latest": 1, "dry_run": True}}),
        ("PUT", f"{files}/other.bin", {"content": DATA}),
        ("DELETE", f"{files}/model.bin", {}),
        ("POST", f"{base}/{checkpoint}/uploads", {"json": {"path": "new.bin"}}),
        (
            "PATCH",
            f"/preview/uploads/{upload}",
            {"content": DATA, "headers": {"Upload-Offset": "0"}},
        ),
        ("POST", f"/preview/uploads/{upload}/complete", {"json": {"sha256": DIGEST}}),
        ("DELETE", f"/preview/uploads/{upload}", {}),
        (
            "POST",
            f"{base}/{checkpoint}/transfers",
            {
                "json": {
                    "operation": "upload",
                    "files": [{"path": "copy.bin", "sha256": DIGEST, "size_bytes": len(DATA)}],
                }
            },
        ),
        ("DELETE", f"/preview/models/{model}", {}),
    ]


def state(api: httpx.Client, made: dict[str, str]) -> dict[str, Any]:
    files = f"/preview/models/{made['model']}/checkpoints/{made['checkpoint']}/files"
    return {
        "models": snapshot(api),
        "files": api.get(files).json(),
        "upload": api.head(f"/preview/uploads/{made['upload']}").headers.get("upload-offset"),
    }


def test_every_write_with_a_read_only_key_is_403_and_changes_nothing(
    api: httpx.Client, reader: httpx.Client, made: dict[str, str]
) -> None:
    before = state(api, made)

    for method, url, kwargs in writes(made):
        response = reader.request(method, url, **kwargs)
        assert_detail(response, 403, READ_ONLY_DETAIL)

    assert state(api, made) == before
    # The same requests with the read-write key are not refused: the 403s were the scope's alone.
    # (Some then find nothing, once an earlier one of them deleted it.)
    for method, url, kwargs in writes(made):
        assert api.request(method, url, **kwargs).status_code in (200, 201, 204, 404), (method, url)


def test_a_read_only_key_reads_lists_and_downloads_everything(
    api: httpx.Client, reader: httpx.Client, made: dict[str, str]
) -> None:
    model, checkpoint = made["model"], made["checkpoint"]
    base = f"/preview/models/{model}/checkpoints"
    files = f"{base}/{checkpoint}/files"
    for url in (
        "/preview/models",
        f"/preview/models/{model}",
        base,  # the list fast path
        f"{base}?limit=1&order=desc",
        f"{base}?limit=0",  # refused by the fast path, answered (422) by the route: not a 403
        f"{base}/{checkpoint}",
        f"{base}/steps/2",
        f"{base}/best?metric=loss&mode=min",
        files,
        "/preview/usage",
    ):
        mine, theirs = reader.get(url), api.get(url)
        assert (mine.status_code, mine.json()) == (theirs.status_code, theirs.json()), url
    assert reader.get(f"{files}/model.bin").content == DATA
    assert reader.get(f"{files}/model.bin", headers={"Range": "bytes=0-6"}).content == b"weights"
    assert reader.head(f"{files}/model.bin").headers["etag"] == f'"{DIGEST}"'
    assert reader.head(f"/preview/uploads/{made['upload']}").headers["upload-offset"] == "0"
    # A batch download only reads: allowed, though it is a POST.
    download = reader.post(f"{base}/{checkpoint}/transfers", json={"operation": "download"})
    assert download.status_code == 200, download.text
    assert [file["path"] for file in download.json()["files"]] == ["model.bin"]


def test_the_key_endpoint_says_what_the_key_may_do(
    server: RunningServer, api: httpx.Client, reader: httpx.Client
) -> None:
    assert reader.get("/preview/key").json() == {"entity": "default", "read_only": True}
    assert api.get("/preview/key").json() == {"entity": "default", "read_only": False}
    with server.client(None) as anonymous:
        assert anonymous.get("/preview/key").status_code == 401
    with server.client("ckpt_not-a-key") as unknown:
        assert unknown.get("/preview/key").status_code == 401
    operation = httpx.get(server.url.removesuffix("/v1") + "/openapi.json").json()
    response = operation["paths"][KEY_PATH]["get"]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(operation["components"]["schemas"][schema]["properties"]) == {"entity", "read_only"}


def test_keys_list_shows_the_scope(server: RunningServer) -> None:
    create_key_with_cli(server, "--name", "pull-only", "--read-only")
    create_key_with_cli(server, "--name", "trainer")

    code, listing, _ = run("keys", "list", "--database-url", server.database_url)

    assert code == 0
    lines = {line.split()[2]: line.split()[3] for line in listing.splitlines()}
    assert lines["pull-only"] == "read-only"
    assert lines["trainer"] == "read-write"
