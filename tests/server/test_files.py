"""Checkpoint files over HTTP (shared/CONTRACT.md section 6): upload, list, download with ranges and
ETags, delete, digests, path rules, dedup and usage, on both databases and both blob stores."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

# The moto fixtures, found by name.
from tests.moto import aws_env, bucket_contents, create_bucket, moto_endpoint  # noqa: F401

from .helpers import create_model, register

Json = dict[str, Any]


def files_url(model_id: str, checkpoint_id: str, path: str = "") -> str:
    base = f"/preview/models/{model_id}/checkpoints/{checkpoint_id}/files"
    return f"{base}/{path}" if path else base


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_header(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


@pytest.fixture
def checkpoint_id(api: httpx.Client, model_id: str) -> str:
    return str(register(api, model_id, 100, {"loss": 0.5})["id"])


def put(
    api: httpx.Client, model_id: str, checkpoint_id: str, path: str, data: bytes, **kw: Any
) -> httpx.Response:
    return api.put(files_url(model_id, checkpoint_id, path), content=data, **kw)


@pytest.fixture(params=["local", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test here runs on a local folder and on S3 (moto; a bucket per test)."""
    if request.param == "local":
        return str(tmp_path / "blobs")
    endpoint = request.getfixturevalue("aws_env")
    return f"s3://{create_bucket(endpoint)}/registry"


def blob_files(blob_url: str) -> dict[str, int]:
    """What the blob store holds, staged uploads included: each name with its size. Local: every file
    under the folder; S3: every object and every multipart upload still open (size -1)."""
    if blob_url.startswith("s3://"):
        return bucket_contents(os.environ["AWS_ENDPOINT_URL"], urlsplit(blob_url).netloc)
    root = Path(blob_url)
    files = root.rglob("*") if root.exists() else []
    return {str(path): path.stat().st_size for path in files if path.is_file()}


def test_upload_download_and_delete_a_file(
    api: httpx.Client, model_id: str, checkpoint_id: str
) -> None:
    data = b"weights" * 1000

    created = put(api, model_id, checkpoint_id, "adapter/model.safetensors", data)

    assert created.status_code == 201, created.text
    assert created.json() == {
        "path": "adapter/model.safetensors",
        "size_bytes": len(data),
        "sha256": sha(data),
    }
    again = put(api, model_id, checkpoint_id, "adapter/model.safetensors", data)
    assert again.status_code == 200
    assert again.json() == created.json()
    other = put(api, model_id, checkpoint_id, "adapter/model.safetensors", b"other")
    assert other.status_code == 409
    assert "detail" in other.json()

    got = api.get(files_url(model_id, checkpoint_id, "adapter/model.safetensors"))
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["etag"] == f'"{sha(data)}"'
    assert got.headers["accept-ranges"] == "bytes"

    head = api.head(files_url(model_id, checkpoint_id, "adapter/model.safetensors"))
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-length", "etag", "accept-ranges"):
        assert head.headers[name] == got.headers[name]

    detail = api.get(f"/preview/models/{model_id}/checkpoints/{checkpoint_id}").json()
    assert (detail["files"], detail["size_bytes"]) == (1, len(data))

    deleted = api.delete(files_url(model_id, checkpoint_id, "adapter/model.safetensors"))
    assert deleted.status_code == 204
    gone = api.get(files_url(model_id, checkpoint_id, "adapter/model.safetensors"))
    assert gone.status_code == 404
    assert gone.json() == {"detail": "File not found"}
    assert (
        api.delete(files_url(model_id, checkpoint_id, "adapter/model.safetensors")).status_code
        == 404
    )
    detail = api.get(f"/preview/models/{model_id}/checkpoints/{checkpoint_id}").json()
    assert (detail["files"], detail["size_bytes"]) == (0, 0)


def test_an_empty_file_and_a_chunked_body(
    api: httpx.Client, model_id: str, checkpoint_id: str
) -> None:
    assert put(api, model_id, checkpoint_id, "empty", b"").json()["size_bytes"] == 0
    assert api.get(files_url(model_id, checkpoint_id, "empty")).content == b""

    chunks = [bytes([index]) * 100_000 for index in range(7)]
    response = api.put(files_url(model_id, checkpoint_id, "chunked.bin"), content=iter(chunks))
    assert response.status_code == 201
    assert response.json()["sha256"] == sha(b"".join(chunks))
    assert api.get(files_url(model_id, checkpoint_id, "chunked.bin")).content == b"".join(chunks)


@pytest.mark.parametrize(
    ("header", "status", "expected"),
    [
        ("bytes=0-9", 206, (0, 10)),
        ("bytes=10-", 206, (10, 100)),
        ("bytes=-5", 206, (95, 100)),
        ("bytes=90-1000", 206, (90, 100)),
        ("bytes=-1000", 206, (0, 100)),
        ("bytes=99-99", 206, (99, 100)),
        ("bytes=100-", 416, None),
        ("bytes=-0", 416, None),
        ("bytes=5-2", 200, (0, 100)),  # invalid: ignored
        ("bytes=0-1,5-6", 200, (0, 100)),  # several ranges: ignored
        ("items=0-1", 200, (0, 100)),
        ("bytes=x-y", 200, (0, 100)),
    ],
)
def test_ranges(
    api: httpx.Client,
    model_id: str,
    checkpoint_id: str,
    header: str,
    status: int,
    expected: tuple[int, int] | None,
) -> None:
    data = bytes(range(100))
    put(api, model_id, checkpoint_id, "f", data)

    for method in ("GET", "HEAD"):
        response = api.request(
            method, files_url(model_id, checkpoint_id, "f"), headers={"Range": header}
        )
        assert response.status_code == status, (method, response.text)
        if expected is None:
            assert response.headers["content-range"] == "bytes */100"
            continue
        start, end = expected
        assert response.headers["content-length"] == str(end - start)
        if status == 206:
            assert response.headers["content-range"] == f"bytes {start}-{end - 1}/100"
        if method == "GET":
            assert response.content == data[start:end]


def test_if_none_match_answers_304(api: httpx.Client, model_id: str, checkpoint_id: str) -> None:
    data = b"config"
    put(api, model_id, checkpoint_id, "config.json", data)
    url = files_url(model_id, checkpoint_id, "config.json")
    etag = api.get(url).headers["etag"]

    for method in ("GET", "HEAD"):
        cached = api.request(method, url, headers={"If-None-Match": etag})
        assert cached.status_code == 304
        assert cached.content == b""
        assert cached.headers["etag"] == etag
    assert api.get(url, headers={"If-None-Match": '"0000"'}).status_code == 200


def test_files_are_listed_in_byte_order_with_cursor_pages(
    api: httpx.Client, model_id: str, checkpoint_id: str
) -> None:
    paths = ["b", "a/z", "a", "B", "é", "a/b", "tokenizer/tokenizer.json", "z~"]
    for index, path in enumerate(paths):
        assert put(api, model_id, checkpoint_id, path, str(index).encode()).status_code == 201
    expected = sorted(paths, key=lambda path: path.encode())

    whole = api.get(files_url(model_id, checkpoint_id)).json()
    assert whole["object"] == "list"
    assert whole["has_more"] is False
    assert [item["path"] for item in whole["data"]] == expected
    assert whole["data"][0] == {"path": "B", "size_bytes": 1, "sha256": sha(b"3")}

    walked: list[str] = []
    query: dict[str, Any] = {"limit": 3}
    while True:
        page = api.get(files_url(model_id, checkpoint_id), params=query).json()
        walked += [item["path"] for item in page["data"]]
        if not page["has_more"]:
            break
        query["after"] = page["data"][-1]["path"]
    assert walked == expected
    for limit in (0, 1001, "x"):
        assert (
            api.get(files_url(model_id, checkpoint_id), params={"limit": limit}).status_code == 422
        )


def test_content_digest_is_checked_and_a_mismatch_stores_nothing(
    api: httpx.Client, model_id: str, checkpoint_id: str, blob_url: str
) -> None:
    data = b"the real bytes"
    ok = put(
        api, model_id, checkpoint_id, "a", data, headers={"Content-Digest": digest_header(data)}
    )
    assert ok.status_code == 201
    before = blob_files(blob_url)

    bad = put(
        api, model_id, checkpoint_id, "b", data, headers={"Content-Digest": digest_header(b"x")}
    )

    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["header", "content-digest"]
    assert api.get(files_url(model_id, checkpoint_id, "b")).status_code == 404
    assert blob_files(blob_url) == before
    for malformed in ("sha-256=abc", "sha-256=:bm90IDMyIGJ5dGVz:", "sha-512=:AAAA:"):
        response = put(
            api, model_id, checkpoint_id, "c", data, headers={"Content-Digest": malformed}
        )
        assert response.status_code == 422, malformed
    several = f"sha-512=:AAAA:, {digest_header(data)}"
    assert (
        put(
            api, model_id, checkpoint_id, "d", data, headers={"Content-Digest": several}
        ).status_code
        == 201
    )


BAD_PATHS = [
    "..",
    "../x",
    "a/../../x",
    "%2e%2e/x",
    "a/%2E%2E/b",
    ".",
    "a/./b",
    "a%5Cb",
    "a//b",
    "a/",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "a%00b",
    "a%0Ab",
    "a%7Fb",
    "%ff",
    "a" * 1025,
    "%C3%A9" * 513,
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_refused_and_touch_nothing(
    server_url: str, api_key: str, model_id: str, checkpoint_id: str, blob_url: str, path: str
) -> None:
    before = blob_files(blob_url)
    # Raw URLs: httpx would otherwise normalise dot segments before sending.
    base = f"{server_url}/preview/models/{model_id}/checkpoints/{checkpoint_id}/files/"
    for method in ("PUT", "GET", "HEAD", "DELETE"):
        status, body = raw_request(method, base + path, api_key, b"x" if method == "PUT" else None)
        assert status in (404, 422), (method, path, status, body)
        if status == 422 and method != "HEAD":
            assert b'"loc":["path","path"]' in body
        if status == 404:
            # Only a URL that routes nowhere (an empty path) may be 404; never a file lookup.
            assert path.endswith("/") or path == "%2Fetc%2Fpasswd" or path.startswith("/"), path
    assert blob_files(blob_url) == before


def raw_request(method: str, url: str, key: str, body: bytes | None) -> tuple[int, bytes]:
    """One HTTP/1.1 request with the target sent exactly as written."""
    parts = urlsplit(url)
    target = url[url.index(parts.path) :]
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Authorization: Bearer {key}",
        "Connection: close",
        f"Content-Length: {len(body or b'')}",
    ]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def test_dedup_and_usage(api: httpx.Client, model_id: str, blob_url: str) -> None:
    tokenizer = b"tokenizer" * 500
    empty = api.get("/preview/usage").json()
    assert empty == {
        "entity": "default",
        "checkpoints": 0,
        "files": 0,
        "logical_bytes": 0,
        "stored_bytes": 0,
    }
    for step in (1, 2, 3):
        checkpoint = register(api, model_id, step)["id"]
        assert put(api, model_id, checkpoint, "tokenizer.json", tokenizer).status_code == 201
        assert put(api, model_id, checkpoint, "weights", str(step).encode() * 10).status_code == 201

    usage = api.get("/preview/usage").json()
    assert usage == {
        "entity": "default",
        "checkpoints": 3,
        "files": 6,
        "logical_bytes": 3 * len(tokenizer) + 30,
        "stored_bytes": len(tokenizer) + 30,
    }
    stored = [name for name, size in blob_files(blob_url).items() if size == len(tokenizer)]
    assert len(stored) == 1, "identical content is stored once"


def test_another_entitys_files_are_404_on_every_route(
    server: Any, api: httpx.Client, model_id: str, checkpoint_id: str
) -> None:
    from ..conftest import add_key

    put(api, model_id, checkpoint_id, "secret", b"secret")
    other_key = add_key(server.database_url, "other")
    with server.client(other_key) as other:
        base = f"/preview/models/{model_id}/checkpoints/{checkpoint_id}"
        for method, path, kwargs in [
            ("GET", "/files", {}),
            ("GET", "/files/secret", {}),
            ("HEAD", "/files/secret", {}),
            ("PUT", "/files/secret", {"content": b"mine"}),
            ("DELETE", "/files/secret", {}),
            ("POST", "/uploads", {"json": {"path": "x"}}),
            ("POST", "/transfers", {"json": {"operation": "download"}}),
        ]:
            response = other.request(method, base + path, **kwargs)
            assert response.status_code == 404, (method, path)
            if method != "HEAD":
                assert response.json() == {"detail": "Model not found"}
        assert other.get("/preview/usage").json()["files"] == 0
    assert api.get(files_url(model_id, checkpoint_id, "secret")).content == b"secret"


def test_unknown_checkpoint_and_model(api: httpx.Client, model_id: str) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    response = api.put(files_url(model_id, unknown, "x"), content=b"x")
    assert response.status_code == 404
    assert response.json() == {"detail": "Checkpoint not found"}
    response = api.get(files_url(unknown, unknown))
    assert response.json() == {"detail": "Model not found"}


def test_concurrent_uploads_of_one_path_end_with_one_file(
    server: Any, api_key: str, model_id: str, checkpoint_id: str
) -> None:
    contents = [bytes([index]) * 200_000 for index in range(8)]
    statuses: list[int] = [0] * len(contents)

    def upload(index: int) -> None:
        with server.client(api_key) as client:
            statuses[index] = put(
                client, model_id, checkpoint_id, "race", contents[index]
            ).status_code

    threads = [threading.Thread(target=upload, args=(index,)) for index in range(len(contents))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] + [409] * 7
    with server.client(api_key) as client:
        stored = client.get(files_url(model_id, checkpoint_id, "race")).content
        listed = client.get(files_url(model_id, checkpoint_id)).json()["data"]
    assert stored == contents[statuses.index(201)]
    assert [item["path"] for item in listed] == ["race"]


def test_a_body_cut_short_leaves_nothing(
    server_url: str,
    api: httpx.Client,
    api_key: str,
    model_id: str,
    checkpoint_id: str,
    blob_url: str,
) -> None:
    put(api, model_id, checkpoint_id, "warm-up", b"x")
    before = blob_files(blob_url)
    parts = urlsplit(server_url)
    target = f"{parts.path}/preview/models/{model_id}/checkpoints/{checkpoint_id}/files/cut"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            (
                f"PUT {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Authorization: Bearer {api_key}\r\nContent-Length: 1000000\r\n\r\n"
            ).encode()
            + b"y" * 300_000
        )
    # The server sees the disconnect, aborts, and the next upload works.
    assert api.put(files_url(model_id, checkpoint_id, "after"), content=b"z").status_code == 201
    assert api.get(files_url(model_id, checkpoint_id, "cut")).status_code == 404
    for _ in range(100):
        leftover = [path for path in blob_files(blob_url) if path not in before]
        if len(leftover) == 1:  # the blob of "after"
            break
        threading.Event().wait(0.05)
    assert len(leftover) == 1, leftover


def test_deleting_checkpoints_makes_their_files_unreachable_and_retention_reports_freed_bytes(
    api: httpx.Client, model_id: str
) -> None:
    shared, own = b"shared" * 100, [b"own-%d" % step * 100 for step in range(4)]
    ids = []
    for step in range(4):
        checkpoint = register(api, model_id, step, {"loss": 1.0 - step / 10})["id"]
        ids.append(checkpoint)
        put(api, model_id, checkpoint, "shared", shared)
        put(api, model_id, checkpoint, "own", own[step])

    retention = api.post(
        f"/preview/models/{model_id}/checkpoints/retention",
        json={"keep_latest": 2, "dry_run": True},
    ).json()
    # The dry run tells what the run will free, and frees nothing.
    assert retention["freed_bytes"] == len(own[0]) + len(own[1])
    retention = api.post(
        f"/preview/models/{model_id}/checkpoints/retention", json={"keep_latest": 2}
    ).json()
    assert retention["deleted_steps"] == [0, 1]
    # The shared content is still held by steps 2 and 3; each deleted step's own is freed.
    assert retention["freed_bytes"] == len(own[0]) + len(own[1])
    for checkpoint in ids[:2]:
        assert api.get(files_url(model_id, checkpoint, "own")).status_code == 404

    api.request("DELETE", f"/preview/models/{model_id}/checkpoints", json={"steps": [2]})
    assert api.get(files_url(model_id, ids[2], "shared")).status_code == 404
    assert api.get(files_url(model_id, ids[3], "shared")).content == shared
    api.delete(f"/preview/models/{model_id}")
    assert api.get("/preview/usage").json()["stored_bytes"] == 0


def test_file_size_limit_is_answered_before_the_body(
    database_url: str, blob_url: str, api_key: str
) -> None:
    from ckpt_registry.server import Settings

    from ..conftest import serving

    settings = Settings(
        database_url=database_url, blob_url=blob_url, gc_interval_seconds=0, max_file_bytes=1000
    )
    with serving(settings) as server, server.client(api_key) as api:
        model = create_model(api, "limits")
        checkpoint = register(api, model, 1)["id"]
        parts = urlsplit(server.url)
        target = f"{parts.path}/preview/models/{model}/checkpoints/{checkpoint}/files/big"
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            # A length over the limit and no body at all: the answer cannot wait for the body.
            sock.sendall(
                (
                    f"PUT {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    f"Authorization: Bearer {api_key}\r\nContent-Length: 1000000000\r\n\r\n"
                ).encode()
            )
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413")
        chunked = api.put(
            files_url(model, checkpoint, "big"), content=iter([b"x" * 600, b"y" * 600])
        )
        assert chunked.status_code == 413
        assert (
            api.put(files_url(model, checkpoint, "small"), content=b"x" * 1000).status_code == 201
        )
        assert api.get(files_url(model, checkpoint)).json()["data"] == [
            {"path": "small", "size_bytes": 1000, "sha256": sha(b"x" * 1000)}
        ]


def test_entity_quota_answers_507(database_url: str, blob_url: str, api_key: str) -> None:
    from ckpt_registry.server import Settings

    from ..conftest import serving

    settings = Settings(
        database_url=database_url, blob_url=blob_url, gc_interval_seconds=0, entity_quota_bytes=1500
    )
    with serving(settings) as server, server.client(api_key) as api:
        model = create_model(api, "quota")
        checkpoint = register(api, model, 1)["id"]
        assert api.put(files_url(model, checkpoint, "a"), content=b"a" * 1000).status_code == 201
        # An upload needs room for its bytes; content the entity holds is attached for nothing.
        copy = {"path": "copy", "sha256": sha(b"a" * 1000), "size_bytes": 1000}
        batch = api.post(
            f"/preview/models/{model}/checkpoints/{checkpoint}/transfers",
            json={"operation": "upload", "files": [copy]},
        )
        assert batch.json()["files"][0]["action"] == "attached"
        assert (
            api.put(files_url(model, checkpoint, "again"), content=b"a" * 1000).status_code == 507
        )
        over = api.put(files_url(model, checkpoint, "b"), content=b"b" * 1000)
        assert over.status_code == 507
        assert "quota" in over.json()["detail"]
        assert api.get(files_url(model, checkpoint, "b")).status_code == 404
        assert api.put(files_url(model, checkpoint, "c"), content=b"c" * 500).status_code == 201
