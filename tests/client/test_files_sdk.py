"""The SDK's weights: a folder saved as a checkpoint and downloaded back, against the real server on
both databases and both blob stores (a folder, S3 through moto). Skip-existing is checked on the
wire (no PUT or PATCH sent), resume through a proxy that cuts the connection, integrity by
tampering with a blob on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ckpt_registry.client import (
    AsyncClient,
    Client,
    FileConflictError,
    FileIntegrityError,
    RetryPolicy,
)
from ckpt_registry.client.transfers import SINGLE_PUT_BYTES

# The moto fixtures, found by name.
from tests.moto import aws_env, create_bucket, moto_endpoint  # noqa: F401

from .proxy import CuttingProxy

MIB = 1024 * 1024
BIG = SINGLE_PUT_BYTES + 3 * MIB + 17  # over the single-PUT size: a resumable upload


@pytest.fixture(params=["local", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "blobs")
    return f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/registry"


def make_tree(root: Path, big: int = BIG) -> dict[str, bytes]:
    """A checkpoint folder as a trainer leaves it: nested, one large file, one empty."""
    files = {
        "config.json": b'{"model_type": "tiny"}',
        "model.safetensors": os.urandom(big),
        "tokenizer/tokenizer.json": b'{"vocab": {}}',
        "tokenizer/special/tokens.txt": b"",
        "optimizer.pt": os.urandom(300_000),
    }
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_folder_goes_up_and_comes_back_identical(
    client: Client, model_id: str, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "out" / "checkpoint-10")
    saved = client.files.save(
        model_id, step=10, folder=tmp_path / "out" / "checkpoint-10", metrics={"loss": 0.5}
    )
    assert saved.upload.uploaded == sorted(files)
    assert saved.upload.bytes_sent == sum(len(d) for d in files.values())
    assert (saved.checkpoint.step, saved.checkpoint.metrics) == (10, {"loss": 0.5})
    assert saved.checkpoint.files == len(files)
    assert saved.checkpoint.size_bytes == sum(len(d) for d in files.values())
    listed = client.files.list(model_id, saved.checkpoint.id)
    assert [(f.path, f.size_bytes, f.sha256) for f in listed] == [
        (path, len(files[path]), sha(files[path])) for path in sorted(files)
    ]

    got = client.files.download_checkpoint(model_id, tmp_path / "latest", latest=True)
    assert got.checkpoint.id == saved.checkpoint.id
    assert read_tree(tmp_path / "latest") == files
    # Again: everything is on disk with the right sha256, nothing is fetched.
    again = client.files.download_checkpoint(model_id, tmp_path / "latest", step=10)
    assert (again.download.downloaded, again.download.bytes_received) == ([], 0)
    assert again.download.unchanged == sorted(files)


@pytest.mark.anyio
async def test_a_second_upload_sends_no_file_bytes(
    server_url: str, api_key: str, model_id: str, tmp_path: Path
) -> None:
    make_tree(tmp_path / "ckpt", big=2 * MIB)
    sent: list[tuple[str, str]] = []

    async def record(request: httpx.Request) -> None:
        sent.append((request.method, request.url.path))

    async with (
        httpx.AsyncClient(event_hooks={"request": [record]}) as http,
        AsyncClient(api_key=api_key, base_url=server_url, http_client=http) as client,
    ):
        first = await client.files.save(model_id, step=1, folder=tmp_path / "ckpt")
        assert first.upload.bytes_sent > 0
        sent.clear()
        second = await client.files.save(model_id, step=1, folder=tmp_path / "ckpt")
        assert sent == [
            ("POST", urlsplit(server_url).path + f"/preview/models/{model_id}/checkpoints"),
            (
                "POST",
                urlsplit(server_url).path
                + f"/preview/models/{model_id}/checkpoints/{first.checkpoint.id}/transfers",
            ),
            (
                "GET",
                urlsplit(server_url).path
                + f"/preview/models/{model_id}/checkpoints/{first.checkpoint.id}",
            ),
        ]
        assert second.upload.unchanged == first.upload.uploaded
        assert second.upload.bytes_sent == 0

        # The same content at another step: attached from what the entity holds, no byte sent.
        sent.clear()
        third = await client.files.save(model_id, step=2, folder=tmp_path / "ckpt")
        assert third.upload.attached == first.upload.uploaded
        assert not [method for method, _ in sent if method in ("PUT", "PATCH")]


def test_other_content_at_a_taken_path_is_refused_before_anything_is_sent(
    client: Client, model_id: str, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"one")
    (tmp_path / "a" / "x.bin").write_bytes(b"x")
    client.files.save(model_id, step=3, folder=tmp_path / "a")
    (tmp_path / "a" / "w.bin").write_bytes(b"two")
    (tmp_path / "a" / "y.bin").write_bytes(b"y")
    with pytest.raises(FileConflictError) as raised:
        client.files.save(model_id, step=3, folder=tmp_path / "a")
    assert raised.value.paths == ["w.bin"]
    checkpoint = client.checkpoints.at_step(model_id, 3)
    assert [f.path for f in client.files.list(model_id, checkpoint.id)] == ["w.bin", "x.bin"]


def test_the_best_checkpoint_by_a_metric_in_either_direction(
    client: Client, model_id: str, tmp_path: Path
) -> None:
    for step, loss in [(1, 0.9), (2, 0.2), (3, 0.5)]:
        folder = tmp_path / f"c{step}"
        folder.mkdir()
        (folder / "step.txt").write_text(str(step))
        client.files.save(model_id, step=step, folder=folder, metrics={"loss": loss})
    lowest = client.files.download_checkpoint(model_id, tmp_path / "min", best=("loss", "min"))
    assert lowest.checkpoint.step == 2 and (tmp_path / "min" / "step.txt").read_text() == "2"
    highest = client.files.download_checkpoint(model_id, tmp_path / "max", best=("loss", "max"))
    assert highest.checkpoint.step == 1
    with pytest.raises(ValueError, match="one of"):
        client.files.download_checkpoint(model_id, tmp_path / "x", step=1, latest=True)


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_an_upload_cut_off_resumes_from_where_the_server_stopped(
    server_url: str, api_key: str, model_id: str, tmp_path: Path
) -> None:
    data = os.urandom(BIG)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "big.bin").write_bytes(data)
    upstream = urlsplit(server_url)
    proxy = CuttingProxy((upstream.hostname or "", upstream.port or 0), 8 * MIB, "up", cuts=1)
    with (
        proxy.running(),
        Client(
            api_key=api_key,
            base_url=proxy.url,
            retry_policy=RetryPolicy(initial_delay=0.01, max_delay=0.05),
        ) as client,
    ):
        saved = client.files.save(model_id, step=5, folder=tmp_path / "w")
    assert proxy.cut_count == 1
    # Resumed, not started again: what went through is the file once plus what was in flight.
    assert BIG < proxy.sent_up < BIG + 6 * MIB
    assert saved.upload.bytes_sent == BIG
    with Client(api_key=api_key, base_url=server_url) as direct:
        direct.files.download(model_id, saved.checkpoint.id, tmp_path / "back")
    assert (tmp_path / "back" / "big.bin").read_bytes() == data


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_an_interrupted_download_leaves_no_final_file_and_continues_later(
    server_url: str, api_key: str, model_id: str, tmp_path: Path
) -> None:
    data = os.urandom(12 * MIB)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "big.bin").write_bytes(data)
    with Client(api_key=api_key, base_url=server_url) as direct:
        saved = direct.files.save(model_id, step=7, folder=tmp_path / "w")
    upstream = (urlsplit(server_url).hostname or "", urlsplit(server_url).port or 0)
    dest = tmp_path / "dest"
    quick = RetryPolicy(initial_delay=0.01, max_delay=0.02)

    # Every connection cut after 1 MiB: more resumes than the SDK makes, so it gives up.
    proxy = CuttingProxy(upstream, 1 * MIB, "down", cuts=-1)
    with (
        proxy.running(),
        Client(api_key=api_key, base_url=proxy.url, retry_policy=quick) as client,
        pytest.raises(Exception),  # noqa: B017 - whichever transport error the cut gives
    ):
        client.files.download(model_id, saved.checkpoint.id, dest)
    assert not (dest / "big.bin").exists()
    partial = dest / "big.bin.partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    assert partial.read_bytes() == data[:kept]

    # Cut after 4 MiB: each resume continues with a Range request from the bytes on disk.
    proxy = CuttingProxy(upstream, 4 * MIB, "down", cuts=-1)
    with (
        proxy.running(),
        Client(api_key=api_key, base_url=proxy.url, retry_policy=quick) as client,
    ):
        result = client.files.download(model_id, saved.checkpoint.id, dest)
    assert proxy.cut_count >= 1
    assert (dest / "big.bin").read_bytes() == data and not partial.exists()
    assert result.bytes_received == len(data) - kept  # continued, never started again


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_a_tampered_blob_is_detected_and_nothing_is_left(
    client: Client, model_id: str, tmp_path: Path, blob_url: str
) -> None:
    data = os.urandom(3 * MIB)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "weights.bin").write_bytes(data)
    saved = client.files.save(model_id, step=9, folder=tmp_path / "w")
    blob = Path(blob_url) / "sha256" / sha(data)[:2] / sha(data)
    blob.chmod(0o644)
    with open(blob, "r+b") as file:
        file.seek(1000)
        file.write(b"\x00" * 16)
    with pytest.raises(FileIntegrityError) as raised:
        client.files.download(model_id, saved.checkpoint.id, tmp_path / "d")
    assert raised.value.expected == sha(data)
    assert not (tmp_path / "d" / "weights.bin").exists()
    assert not (tmp_path / "d" / "weights.bin.partial").exists()
