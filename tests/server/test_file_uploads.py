"""Resumable uploads over HTTP (POST .../uploads, HEAD/PATCH with Upload-Offset, POST .../complete,
DELETE) with a connection dropped mid-PATCH, on both databases and both blob stores.

They keep their sha256 state between requests: a HEAD, a PATCH that continues and a `complete` hash
no staged byte again in the server that staged them (`ckpt_blob_rehashed_bytes_total` counts the
bytes read back to hash), while a restart, a second server on the same blobs, or a staged file
replaced behind the server's back are hashed again and still give the right digest."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from ckpt_registry.blobs import s3
from ckpt_registry.server import Settings

# The moto fixtures, found by name.
from tests.moto import (  # noqa: F401
    MIB,
    MOTO_UPLOAD_TTL_SECONDS,
    S3_PART_BYTES,
    aws_env,
    create_bucket,
    moto_endpoint,
)

from ..conftest import RunningServer, add_key, serving
from .helpers import register
from .test_files import blob_files, files_url, sha
from .test_metrics import root, scrape, value

# Over two S3 parts (of 5 MiB here), and not a whole number of them: the last part is a short one.
DATA = os.urandom(2 * S3_PART_BYTES + 2 * MIB + 123)
# Where the connection drops: past two whole parts, short of the third.
DROP_AT = 2 * S3_PART_BYTES + MIB + 5


@pytest.fixture(params=["local", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "blobs")
    return f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/registry"


@pytest.fixture
def settings(database_url: str, blob_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        blob_url=blob_url,
        gc_interval_seconds=0,
        upload_ttl_seconds=MOTO_UPLOAD_TTL_SECONDS,
    )


@pytest.fixture(autouse=True)
def small_s3_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's S3 store sends 5 MiB parts (the least S3 takes) instead of 8 MiB, so a file of
    two and a bit parts is 12 MiB. Set before the server (and its store) starts."""
    monkeypatch.setattr(s3, "PART_BYTES", S3_PART_BYTES)


@pytest.fixture
def checkpoint_id(api: httpx.Client, model_id: str) -> str:
    return str(register(api, model_id, 100, {"loss": 0.5})["id"])


def start_upload(api: httpx.Client, model_id: str, checkpoint_id: str, path: str) -> str:
    response = api.post(
        f"/preview/models/{model_id}/checkpoints/{checkpoint_id}/uploads", json={"path": path}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["path"] == path and body["offset"] == 0
    return str(body["id"])


def upload_url(upload_id: str) -> str:
    return f"/preview/uploads/{upload_id}"


def offset_of(api: httpx.Client, upload_id: str) -> int:
    response = api.head(upload_url(upload_id))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    return int(response.headers["upload-offset"])


def patch(api: httpx.Client, upload_id: str, offset: int, data: bytes) -> httpx.Response:
    return api.patch(upload_url(upload_id), content=data, headers={"Upload-Offset": str(offset)})


def complete(api: httpx.Client, upload_id: str, body: Any = None) -> httpx.Response:
    return api.post(upload_url(upload_id) + "/complete", json=body)


def patch_then_drop(
    server: RunningServer, key: str, upload_id: str, data: bytes, sent: int
) -> None:
    """A PATCH declaring all of `data` whose connection closes after `sent` bytes, once the server
    has read every one of them (so what it keeps is exact, not a race with the close)."""
    parts = urlsplit(server.url)
    head = (
        f"PATCH {parts.path}{upload_url(upload_id)} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode() + data[:sent])
        wait_until_read(sock)


def wait_until_read(sock: socket.socket) -> None:
    """Until nothing sent on `sock` waits in either kernel (the client's send queue, the server's
    receive queue, as /proc/net/tcp shows them), then a moment for the app to take what the server
    buffered."""
    mine, theirs = sock.getsockname()[1], sock.getpeername()[1]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        queues = {}
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
                sending, receiving = (int(size, 16) for size in fields[4].split(":"))
                queues[local, remote] = (sending, receiving)
        if queues[mine, theirs][0] == 0 and queues[theirs, mine][1] == 0:
            time.sleep(0.3)
            return
        time.sleep(0.01)
    raise AssertionError("the server did not read the body")


def staged(blob_url: str) -> list[str]:
    """What the blob store holds for uploads in progress (staged files, parts, objects)."""
    return [name for name in blob_files(blob_url) if "/uploads/" in name]


def test_an_upload_continues_after_a_dropped_connection(
    server: RunningServer,
    api: httpx.Client,
    api_key: str,
    model_id: str,
    checkpoint_id: str,
    blob_url: str,
) -> None:
    upload_id = start_upload(api, model_id, checkpoint_id, "weights/model.safetensors")
    assert offset_of(api, upload_id) == 0

    patch_then_drop(server, api_key, upload_id, DATA, DROP_AT)

    # Every byte received is kept; on S3 as two whole parts and a tail staged beside them.
    kept = offset_of(api, upload_id)
    assert kept == DROP_AT
    if blob_url.startswith("s3://"):
        assert sorted(blob_files(blob_url).items()) == [
            (f"registry/uploads/{uuid.UUID(upload_id).hex} (parts)", -1),
            (f"registry/uploads/{uuid.UUID(upload_id).hex}.tail", DROP_AT - 2 * S3_PART_BYTES),
        ]
    assert (
        api.get(files_url(model_id, checkpoint_id, "weights/model.safetensors")).status_code == 404
    )

    for wrong in (0, kept + 1, kept - 1):
        refused = patch(api, upload_id, wrong, DATA[wrong:])
        assert refused.status_code == 409, refused.text
        assert refused.headers["upload-offset"] == str(kept)
        assert str(kept) in refused.json()["detail"]
    assert offset_of(api, upload_id) == kept

    appended = patch(api, upload_id, kept, DATA[kept:])
    assert appended.status_code == 204, appended.text
    assert appended.headers["upload-offset"] == str(len(DATA))
    assert offset_of(api, upload_id) == len(DATA)

    done = complete(api, upload_id, {"sha256": sha(DATA)})
    assert done.status_code == 201, done.text
    assert done.json() == {
        "path": "weights/model.safetensors",
        "size_bytes": len(DATA),
        "sha256": sha(DATA),
    }
    got = api.get(files_url(model_id, checkpoint_id, "weights/model.safetensors"))
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == sha(DATA)
    assert got.content == DATA
    # The upload is over: its id answers 404 and nothing of it stays staged.
    assert api.head(upload_url(upload_id)).status_code == 404
    assert complete(api, upload_id, {"sha256": sha(DATA)}).status_code == 404
    assert staged(blob_url) == []


def test_a_small_file_in_several_patches(
    api: httpx.Client, model_id: str, checkpoint_id: str, blob_url: str
) -> None:
    """A file under one part, sent in pieces: every PATCH's bytes count, the last short piece too."""
    data = b"config" * 1000
    upload_id = start_upload(api, model_id, checkpoint_id, "config.json")
    offset = 0
    for piece in (data[:100], data[100:4000], data[4000:]):
        response = patch(api, upload_id, offset, piece)
        assert response.status_code == 204, response.text
        offset += len(piece)
        assert response.headers["upload-offset"] == str(offset)
        assert offset_of(api, upload_id) == offset

    done = complete(api, upload_id)
    assert done.status_code == 201, done.text
    assert done.json()["sha256"] == sha(data)
    assert api.get(files_url(model_id, checkpoint_id, "config.json")).content == data
    assert staged(blob_url) == []


def test_completing_with_a_wrong_sha256_is_422_and_leaves_nothing(
    api: httpx.Client, model_id: str, checkpoint_id: str, blob_url: str
) -> None:
    data = b"almost the weights" * 1000
    upload_id = start_upload(api, model_id, checkpoint_id, "w")
    assert patch(api, upload_id, 0, data).status_code == 204

    wrong = complete(api, upload_id, {"sha256": sha(b"other bytes")})

    assert wrong.status_code == 422, wrong.text
    assert api.get(files_url(model_id, checkpoint_id, "w")).status_code == 404
    assert api.get(files_url(model_id, checkpoint_id)).json()["data"] == []
    assert api.head(upload_url(upload_id)).status_code == 404
    assert blob_files(blob_url) == {}
    assert api.get("/preview/usage").json()["stored_bytes"] == 0
    malformed = complete(api, start_upload(api, model_id, checkpoint_id, "x"), {"sha256": "ABC"})
    assert malformed.status_code == 422


def test_delete_cancels_an_upload(
    api: httpx.Client, model_id: str, checkpoint_id: str, blob_url: str
) -> None:
    upload_id = start_upload(api, model_id, checkpoint_id, "cancelled")
    assert patch(api, upload_id, 0, b"some bytes").status_code == 204

    assert api.delete(upload_url(upload_id)).status_code == 204

    assert api.head(upload_url(upload_id)).status_code == 404
    assert patch(api, upload_id, 10, b"more").status_code == 404
    assert complete(api, upload_id).json() == {"detail": "Upload not found"}
    assert api.delete(upload_url(upload_id)).status_code == 404
    assert api.get(files_url(model_id, checkpoint_id, "cancelled")).status_code == 404
    assert staged(blob_url) == []


def test_another_entity_gets_404_for_the_upload_id(
    server: RunningServer, api: httpx.Client, model_id: str, checkpoint_id: str
) -> None:
    upload_id = start_upload(api, model_id, checkpoint_id, "mine")
    assert patch(api, upload_id, 0, b"mine").status_code == 204

    with server.client(add_key(server.database_url, "other")) as other:
        for method, path, kwargs in [
            ("HEAD", "", {}),
            ("PATCH", "", {"content": b"theirs", "headers": {"Upload-Offset": "4"}}),
            ("POST", "/complete", {"json": {}}),
            ("DELETE", "", {}),
        ]:
            response = other.request(method, upload_url(upload_id) + path, **kwargs)
            assert response.status_code == 404, (method, path)
            if method != "HEAD":
                assert response.json() == {"detail": "Upload not found"}

    # Untouched by all of that: the owner continues and completes it.
    assert offset_of(api, upload_id) == 4
    assert complete(api, upload_id).status_code == 201
    assert api.get(files_url(model_id, checkpoint_id, "mine")).content == b"mine"


# Past two whole S3 parts of DATA, short of the third.
HALF = DROP_AT


def rehashed(server: RunningServer) -> float:
    """Staged bytes this server read back to hash (its own metrics: each test server has its own)."""
    _, samples = scrape(root(server.url) + "/metrics")
    assert "ckpt_blob_rehashed_bytes_total" in samples
    return value(samples, "ckpt_blob_rehashed_bytes_total")


def test_a_resumed_upload_is_not_hashed_again_in_the_same_server(
    server: RunningServer,
    api: httpx.Client,
    api_key: str,
    model_id: str,
    checkpoint_id: str,
    blob_url: str,
) -> None:
    upload_id = start_upload(api, model_id, checkpoint_id, "weights.bin")
    patch_then_drop(server, api_key, upload_id, DATA, HALF)
    assert offset_of(api, upload_id) == HALF
    assert patch(api, upload_id, HALF, DATA[HALF : HALF + MIB]).status_code == 204
    assert offset_of(api, upload_id) == HALF + MIB
    assert patch(api, upload_id, HALF + MIB, DATA[HALF + MIB :]).status_code == 204
    assert offset_of(api, upload_id) == len(DATA)

    done = complete(api, upload_id, {"sha256": sha(DATA)})

    assert done.status_code == 201, done.text
    assert done.json()["sha256"] == sha(DATA)
    assert api.get(files_url(model_id, checkpoint_id, "weights.bin")).content == DATA
    assert rehashed(server) == 0
    assert staged(blob_url) == []


def test_after_a_restart_the_staged_bytes_are_hashed_once_and_head_hashes_nothing(
    settings: Settings, api_key: str, blob_url: str
) -> None:
    with serving(settings) as first, first.client(api_key) as api:
        model_id = make_model(api)
        checkpoint_id = make_checkpoint(api, model_id)
        upload_id = start_upload(api, model_id, checkpoint_id, "weights.bin")
        assert patch(api, upload_id, 0, DATA[:HALF]).status_code == 204

    with serving(settings) as second, second.client(api_key) as api:
        assert offset_of(api, upload_id) == HALF
        assert offset_of(api, upload_id) == HALF
        assert rehashed(second) == 0  # asking the offset hashes nothing
        assert patch(api, upload_id, HALF, DATA[HALF:]).status_code == 204
        assert offset_of(api, upload_id) == len(DATA)

        done = complete(api, upload_id, {"sha256": sha(DATA)})

        assert done.status_code == 201, done.text
        assert api.get(files_url(model_id, checkpoint_id, "weights.bin")).content == DATA
        if blob_url.startswith("s3://"):
            # S3 cannot read parts back before the upload is assembled: all of it, once, at the end.
            assert rehashed(second) == len(DATA)
        else:
            # What the first server staged, hashed once before the PATCH appended.
            assert rehashed(second) == HALF


def test_two_servers_appending_to_one_upload_never_trust_a_stale_hash(
    settings: Settings, api_key: str, blob_url: str
) -> None:
    """As PostgreSQL deployments run: several processes on one database and one blob store."""
    first = S3_PART_BYTES + MIB  # one whole S3 part and a tail: the second server sends the next
    with (
        serving(settings) as one,
        serving(settings) as two,
        one.client(api_key) as api_one,
        two.client(api_key) as api_two,
    ):
        model_id = make_model(api_one)
        checkpoint_id = make_checkpoint(api_one, model_id)
        upload_id = start_upload(api_one, model_id, checkpoint_id, "weights.bin")
        assert patch(api_one, upload_id, 0, DATA[:first]).status_code == 204  # one keeps its hash
        assert patch(api_two, upload_id, first, DATA[first:]).status_code == 204
        assert offset_of(api_one, upload_id) == len(DATA)

        done = complete(api_one, upload_id, {"sha256": sha(DATA)})

        assert done.status_code == 201, done.text
        assert api_one.get(files_url(model_id, checkpoint_id, "weights.bin")).content == DATA
        # One's hash covered only what it staged: it hashed the whole file again instead.
        assert rehashed(one) == len(DATA)
        # Two hashed one's bytes before appending (S3: it cannot, and left the hashing to the end).
        assert rehashed(two) == (0 if blob_url.startswith("s3://") else first)


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_a_staged_file_replaced_behind_the_server_is_hashed_again(
    server: RunningServer,
    api: httpx.Client,
    model_id: str,
    checkpoint_id: str,
    blob_url: str,
) -> None:
    upload_id = start_upload(api, model_id, checkpoint_id, "weights.bin")
    assert patch(api, upload_id, 0, DATA).status_code == 204
    # Other bytes of the same length, under the staged file's name (as a restore from a copy would).
    other = os.urandom(len(DATA))
    path = Path(blob_url) / "uploads" / uuid.UUID(upload_id).hex
    replacement = path.with_name("replacement")
    replacement.write_bytes(other)
    replacement.replace(path)

    done = complete(api, upload_id)

    assert done.status_code == 201, done.text
    assert done.json()["sha256"] == sha(other)
    assert api.get(files_url(model_id, checkpoint_id, "weights.bin")).content == other
    assert rehashed(server) == len(other)


def make_model(api: httpx.Client) -> str:
    response = api.post("/preview/models", json={"project": "p", "name": "m", "base_model": "b"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def make_checkpoint(api: httpx.Client, model_id: str) -> str:
    return str(register(api, model_id, 1)["id"])


def gc_passes(server: RunningServer) -> float:
    """Collector passes the server has made (its `ckpt_gc_runs_total`)."""
    metrics = httpx.get(server.url.removesuffix("/v1") + "/metrics", timeout=10)
    found = re.search(r'^ckpt_gc_runs_total\{outcome="ok"\} (\S+)$', metrics.text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def wait_for_gc_passes(server: RunningServer, count: int) -> None:
    target = gc_passes(server) + count
    deadline = time.monotonic() + 30
    while gc_passes(server) < target:
        assert time.monotonic() < deadline, "the collector made no pass"
        time.sleep(0.05)


def begin_put(server: RunningServer, key: str, path: str, length: int) -> socket.socket:
    """A connection on which a PUT of `length` bytes to `path` has sent its headers."""
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(
        f"PUT {parts.path}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return sock


def staged_puts(blob_url: str) -> list[str]:
    return [name for name in staged(blob_url) if "/uploads/put-" in name]


def test_the_collector_takes_what_a_dropped_put_staged_and_leaves_the_rest(
    database_url: str, blob_url: str, api_key: str
) -> None:
    """With a collector pass every 0.1 s: a PUT whose body is still arriving keeps its staged bytes
    and completes; one whose client dropped leaves nothing staged; a resumable upload dropped the
    same way keeps its bytes and completes after the passes."""
    settings = Settings(
        database_url=database_url,
        blob_url=blob_url,
        gc_interval_seconds=0.1,
        upload_ttl_seconds=MOTO_UPLOAD_TTL_SECONDS,
    )
    with serving(settings) as server, server.client(api_key) as api:
        model_id = api.post(
            "/preview/models", json={"project": "p", "name": "gc", "base_model": "b"}
        ).json()["id"]
        checkpoint_id = str(register(api, model_id, 1)["id"])

        live = files_url(model_id, checkpoint_id, "live.bin")
        with begin_put(server, api_key, live, len(DATA)) as sock:
            sock.sendall(DATA[:DROP_AT])
            wait_until_read(sock)
            assert len(staged_puts(blob_url)) == 1
            wait_for_gc_passes(server, 3)
            assert len(staged_puts(blob_url)) == 1  # its request is still writing it
            sock.sendall(DATA[DROP_AT:])
            assert sock.recv(1024).startswith(b"HTTP/1.1 201 ")
        assert api.get(live).content == DATA

        cut = files_url(model_id, checkpoint_id, "cut.bin")
        with begin_put(server, api_key, cut, len(DATA)) as sock:
            sock.sendall(DATA[:DROP_AT])
            wait_until_read(sock)
            assert len(staged_puts(blob_url)) == 1
        wait_for_gc_passes(server, 2)
        assert staged(blob_url) == []
        assert api.get(cut).status_code == 404

        upload_id = start_upload(api, model_id, checkpoint_id, "resumed.bin")
        patch_then_drop(server, api_key, upload_id, DATA, DROP_AT)
        wait_for_gc_passes(server, 3)
        assert offset_of(api, upload_id) == DROP_AT
        assert patch(api, upload_id, DROP_AT, DATA[DROP_AT:]).status_code == 204
        assert complete(api, upload_id, {"sha256": sha(DATA)}).status_code == 201
        assert api.get(files_url(model_id, checkpoint_id, "resumed.bin")).content == DATA
        assert staged(blob_url) == []
