"""Batch transfers (POST .../checkpoints/{id}/transfers, after the git-lfs batch API): what an upload
needs sending, content the entity holds attached without a byte, no word of another entity's content,
and download hrefs that work (presigned on S3), on both databases and both blob stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

# The moto fixtures, found by name.
from tests.moto import aws_env, create_bucket, moto_endpoint  # noqa: F401

from ..conftest import RunningServer, add_key
from .helpers import create_model, register
from .test_files import blob_files, files_url, put, sha

Json = dict[str, Any]


@pytest.fixture(params=["local", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "blobs")
    return f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/registry"


def transfer(api: httpx.Client, model_id: str, checkpoint_id: str, body: Json) -> Json:
    response = api.post(
        f"/preview/models/{model_id}/checkpoints/{checkpoint_id}/transfers", json=body
    )
    assert response.status_code == 200, response.text
    answer: Json = response.json()
    assert answer["operation"] == body["operation"]
    return answer


def wanted(path: str, data: bytes) -> Json:
    return {"path": path, "sha256": sha(data), "size_bytes": len(data)}


def root_of(server: RunningServer) -> str:
    parts = urlsplit(server.url)
    return f"{parts.scheme}://{parts.netloc}"


def send(server: RunningServer, api: httpx.Client, action: Json, data: bytes) -> None:
    """Upload `data` where an `upload` action says: our PUT route, or straight to S3 and then
    `complete` with the sha256."""
    assert action["action"] == "upload" and action["method"] == "PUT"
    href = action["href"]
    if href.startswith("/"):
        assert "upload_id" not in action or action["upload_id"] is None
        response = api.put(root_of(server) + href, content=data, headers=action["headers"])
        assert response.status_code == 201, response.text
        return
    # Presigned: the bytes go to the store with the headers given, without our key.
    assert urlsplit(href).netloc != urlsplit(server.url).netloc
    stored = httpx.put(href, content=data, headers=action["headers"])
    assert stored.status_code == 200, stored.text
    done = api.post(root_of(server) + action["complete"], json={"sha256": action["sha256"]})
    assert done.status_code == 201, done.text


def test_upload_answers_exists_conflict_attached_and_upload(
    server: RunningServer, api: httpx.Client, model_id: str, blob_url: str
) -> None:
    tokenizer, config, weights = b"tokenizer" * 1000, b'{"layers": 2}', b"new weights" * 500
    earlier = register(api, model_id, 1)["id"]
    checkpoint = register(api, model_id, 2)["id"]
    assert put(api, model_id, earlier, "tokenizer.json", tokenizer).status_code == 201
    assert put(api, model_id, checkpoint, "config.json", config).status_code == 201
    before = api.get("/preview/usage").json()
    objects = blob_files(blob_url)

    answer = transfer(
        api,
        model_id,
        checkpoint,
        {
            "operation": "upload",
            "files": [
                wanted("config.json", config),
                wanted("config.json", b"other config"),  # the same path, other content
                wanted("tokenizer.json", tokenizer),
                wanted("model.safetensors", weights),
            ],
        },
    )

    actions = [(item["path"], item["action"]) for item in answer["files"]]
    assert actions == [
        ("config.json", "exists"),
        ("config.json", "conflict"),
        ("tokenizer.json", "attached"),
        ("model.safetensors", "upload"),
    ]
    # Attached without a byte sent: one more file, its bytes already stored once.
    after = api.get("/preview/usage").json()
    assert after["files"] == before["files"] + 1
    assert after["logical_bytes"] == before["logical_bytes"] + len(tokenizer)
    assert after["stored_bytes"] == before["stored_bytes"]
    assert blob_files(blob_url).keys() >= objects.keys()
    assert api.get(files_url(model_id, checkpoint, "tokenizer.json")).content == tokenizer
    assert api.get(files_url(model_id, checkpoint, "model.safetensors")).status_code == 404

    upload = answer["files"][3]
    assert (upload["sha256"], upload["size_bytes"]) == (sha(weights), len(weights))
    send(server, api, upload, weights)
    assert api.get(files_url(model_id, checkpoint, "model.safetensors")).content == weights
    again = transfer(
        api,
        model_id,
        checkpoint,
        {"operation": "upload", "files": [wanted("model.safetensors", weights)]},
    )
    assert again["files"][0]["action"] == "exists"


def test_an_upload_names_each_files_sha256_and_size(
    api: httpx.Client, model_id: str, checkpoint_id: str
) -> None:
    url = f"/preview/models/{model_id}/checkpoints/{checkpoint_id}/transfers"
    for item in (
        {"path": "a"},
        {"path": "a", "sha256": sha(b"a")},
        {"path": "a", "sha256": "A" * 64, "size_bytes": 1},
        {"path": "../a", "sha256": sha(b"a"), "size_bytes": 1},
        {"path": "a", "sha256": sha(b"a"), "size_bytes": -1},
    ):
        response = api.post(url, json={"operation": "upload", "files": [item]})
        assert response.status_code == 422, item
    assert api.get(files_url(model_id, checkpoint_id)).json()["data"] == []


@pytest.fixture
def checkpoint_id(api: httpx.Client, model_id: str) -> str:
    return str(register(api, model_id, 100)["id"])


def test_content_of_another_entity_is_never_attached(
    server: RunningServer, api: httpx.Client, model_id: str, checkpoint_id: str, blob_url: str
) -> None:
    secret = b"another team's weights" * 100
    assert put(api, model_id, checkpoint_id, "weights", secret).status_code == 201

    with server.client(add_key(server.database_url, "other")) as other:
        theirs = create_model(other, "their-model")
        checkpoint = register(other, theirs, 1)["id"]
        answer = transfer(
            other,
            theirs,
            checkpoint,
            {"operation": "upload", "files": [wanted("weights", secret)]},
        )
        # Knowing a sha256 is not holding the content: "upload", exactly as for unknown content.
        (item,) = answer["files"]
        assert item["action"] == "upload", item
        unknown = transfer(
            other,
            theirs,
            checkpoint,
            {"operation": "upload", "files": [wanted("weights", b"nobody has this")]},
        )
        assert set(unknown["files"][0]) == set(item)
        assert other.get(files_url(theirs, checkpoint, "weights")).status_code == 404
        assert other.get("/preview/usage").json()["files"] == 0

        # Sending the bytes proves it: then it is their file too, still stored once.
        send(server, other, item, secret)
        assert other.get(files_url(theirs, checkpoint, "weights")).content == secret
        assert other.get("/preview/usage").json()["stored_bytes"] == len(secret)
    stored = [size for size in blob_files(blob_url).values() if size == len(secret)]
    assert stored == [len(secret)]


def test_download_gives_hrefs_that_work(
    server: RunningServer,
    api: httpx.Client,
    api_key: str,
    model_id: str,
    checkpoint_id: str,
    blob_url: str,
) -> None:
    files = {"adapter_model.safetensors": b"\x00weights" * 5000, "tokenizer/vocab.txt": b"a\nb\n"}
    for path, data in files.items():
        assert put(api, model_id, checkpoint_id, path, data).status_code == 201

    everything = transfer(api, model_id, checkpoint_id, {"operation": "download"})
    named = transfer(
        api,
        model_id,
        checkpoint_id,
        {"operation": "download", "files": [{"path": "tokenizer/vocab.txt"}, {"path": "gone"}]},
    )

    assert [item["path"] for item in everything["files"]] == sorted(files)
    assert named["files"][1] == {"path": "gone", "action": "missing"}
    for item in [*everything["files"], named["files"][0]]:
        data = files[item["path"]]
        assert (item["action"], item["method"]) == ("download", "GET")
        assert (item["sha256"], item["size_bytes"]) == (sha(data), len(data))
        href = item["href"]
        if blob_url.startswith("s3://"):
            # Presigned: plain httpx, without our key, straight from the store.
            got = httpx.get(href)
            assert got.status_code == 200
            assert got.content == data
            name = item["path"].rsplit("/", 1)[-1]
            assert f'filename="{name}"' in got.headers["content-disposition"]
        else:
            assert href.startswith("/v1/preview/models/")
            assert httpx.get(root_of(server) + href).status_code == 401
            got = httpx.get(root_of(server) + href, headers={"Authorization": f"Bearer {api_key}"})
            assert got.status_code == 200
            assert got.content == data
