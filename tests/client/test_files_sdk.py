"""Checkpoint files through the SDK: save a nested folder, skip what the server has, resume after a
dropped connection, download by step, latest and best, verified and atomic; on both databases, and
on the local and the S3 (moto) blob stores for the transfers themselves."""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ckpt_registry.client import (
    APIConnectionError,
    AsyncClient,
    CkptError,
    Client,
    FileConflictError,
    FileIntegrityError,
    RetryPolicy,
    TransferProgress,
    transfers,
)

# The moto fixtures, found by name.
from tests.moto import aws_env, create_bucket, moto_endpoint  # noqa: F401

from .proxy import CuttingProxy

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "blobs")
    return f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/registry"


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        target = root.joinpath(*path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by its `/` path: what a user would see in the folder."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bytes_up(server_url: str, direction: str = "up") -> float:
    """The server's count of body bytes received (``up``) or sent (``down``), from its /metrics."""
    text = httpx.get(server_url.removesuffix("/v1") + "/metrics", timeout=10).text
    total: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ckpt_http_body_bytes_total":
                total[sample.labels["direction"]] += sample.value
    return total[direction]


CHECKPOINT = {
    "adapter_model.safetensors": os.urandom(3 * MIB + 17),
    "config.json": b'{"layers": 2}',
    "tokenizer/tokenizer.json": b'{"vocab": ["a", "b"]}' * 1000,
    "tokenizer/special/tokens.txt": b"<s>\n</s>\n",
    "empty.bin": b"",
}


def test_save_a_nested_folder_then_download_it_byte_identical(
    client: Client, model_id: str, server_url: str, blob_url: str, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "checkpoint-10", CHECKPOINT)
    seen: list[TransferProgress] = []

    saved = client.checkpoints.save(
        model_id, step=10, path=folder, metrics={"loss": 0.5}, progress=seen.append
    )

    assert saved.outcome == "registered"
    assert saved.checkpoint.step == 10 and saved.checkpoint.metrics == {"loss": 0.5}
    assert saved.checkpoint.files == len(CHECKPOINT)
    assert saved.checkpoint.size_bytes == sum(len(d) for d in CHECKPOINT.values())
    assert saved.upload.files_sent == len(CHECKPOINT) and saved.upload.files_skipped == 0
    assert saved.upload.bytes_sent == saved.checkpoint.size_bytes
    assert seen[-1].bytes_done == seen[-1].bytes_total == saved.checkpoint.size_bytes
    assert seen[-1].files_done == seen[-1].files_total == len(CHECKPOINT)
    listed = client.checkpoints.list_files(model_id, step=10)
    assert [f.path for f in listed] == sorted(CHECKPOINT)
    assert {f.path: f.size_bytes for f in listed} == {p: len(d) for p, d in CHECKPOINT.items()}

    up_before, down_before = bytes_up(server_url), bytes_up(server_url, "down")
    result = client.checkpoints.download(model_id, tmp_path / "out", step=10)
    assert tree(tmp_path / "out") == CHECKPOINT
    assert result.checkpoint.id == saved.checkpoint.id
    assert result.bytes_downloaded == saved.checkpoint.size_bytes
    if blob_url.startswith("s3://"):
        # Presigned: the weights went to the bucket and came back from it, not through the server.
        assert up_before < 64 * 1024
        assert bytes_up(server_url, "down") - down_before < 64 * 1024


def test_a_second_upload_sends_no_file_bytes(
    client: Client, model_id: str, server_url: str, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "ckpt", CHECKPOINT)
    client.checkpoints.save(model_id, step=1, path=folder)
    before = bytes_up(server_url)

    again = client.checkpoints.upload(model_id, folder, step=1)
    # The same weights saved at a new step: the entity holds every content already.
    other_step = client.checkpoints.save(model_id, step=2, path=folder, metrics={"loss": 0.4})

    for result in (again, other_step.upload):
        assert result.files_sent == 0 and result.bytes_sent == 0
        assert result.files_skipped == len(CHECKPOINT)
        assert result.bytes_skipped == sum(len(d) for d in CHECKPOINT.values())
    assert other_step.checkpoint.files == len(CHECKPOINT)
    # Only the small JSON requests reached the server: no weights.
    assert bytes_up(server_url) - before < 64 * 1024


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)  # S3: presigned, not through us
def test_an_upload_resumes_from_the_servers_offset_after_a_dropped_connection(
    server_url: str,
    api_key: str,
    fast_retries: RetryPolicy,
    model_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfers, "RESUMABLE_ABOVE", 1 * MIB)
    weights = os.urandom(12 * MIB)
    folder = make_folder(tmp_path / "ckpt", {"model.bin": weights, "config.json": b"{}"})
    host, port = server_url.removeprefix("http://").removesuffix("/v1").split(":")
    proxy = CuttingProxy((host, int(port)), cut_after=6 * MIB, direction="up", cuts=1)
    with (
        proxy.running(),
        Client(api_key=api_key, base_url=proxy.url, retry_policy=fast_retries) as client,
    ):
        result = client.checkpoints.save(model_id, step=5, path=folder)

    assert proxy.cut_count == 1
    # It went on from what the server had kept, not from byte 0.
    assert 0 < result.upload.resumed["model.bin"] < len(weights)
    assert proxy.sent_up < len(weights) + 7 * MIB
    with Client(api_key=api_key, base_url=server_url) as client:
        client.checkpoints.download(model_id, tmp_path / "out", step=5)
    assert (tmp_path / "out" / "model.bin").read_bytes() == weights


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_download_by_latest_and_best_and_a_rerun_fetches_only_what_changed(
    client: Client, model_id: str, tmp_path: Path
) -> None:
    weights = {step: os.urandom(MIB + step) for step in (1, 2, 3)}
    losses = {1: 0.9, 2: 0.3, 3: 0.5}
    for step, data in weights.items():
        folder = make_folder(tmp_path / f"c{step}", {"w.bin": data, "config.json": b"{}"})
        client.checkpoints.save(model_id, step=step, path=folder, metrics={"loss": losses[step]})

    latest = client.checkpoints.download(model_id, tmp_path / "latest", latest=True)
    best = client.checkpoints.download(model_id, tmp_path / "best", best=("loss", "min"))
    assert latest.checkpoint.step == 3 and best.checkpoint.step == 2
    assert (tmp_path / "latest" / "w.bin").read_bytes() == weights[3]
    assert (tmp_path / "best" / "w.bin").read_bytes() == weights[2]

    again = client.checkpoints.download(model_id, tmp_path / "best", best=("loss", "min"))
    assert again.downloaded == [] and again.bytes_downloaded == 0
    assert sorted(again.skipped) == ["config.json", "w.bin"]

    (tmp_path / "best" / "w.bin").write_bytes(b"edited by hand")  # a different file
    repaired = client.checkpoints.download(model_id, tmp_path / "best", step=2)
    assert repaired.downloaded == ["w.bin"] and repaired.skipped == ["config.json"]
    assert (tmp_path / "best" / "w.bin").read_bytes() == weights[2]

    with pytest.raises(ValueError, match="one of"):
        client.checkpoints.download(model_id, tmp_path / "x", latest=True, step=2)


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_a_corrupted_blob_gives_an_integrity_error_and_no_complete_looking_file(
    client: Client, model_id: str, blob_url: str, tmp_path: Path
) -> None:
    data = os.urandom(2 * MIB)
    folder = make_folder(tmp_path / "ckpt", {"model.bin": data})
    client.checkpoints.save(model_id, step=1, path=folder)
    [blob] = [p for p in Path(blob_url, "sha256").rglob("*") if p.is_file()]
    blob.chmod(stat.S_IRUSR | stat.S_IWUSR)
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one bit of rot, same size

    with pytest.raises(FileIntegrityError) as failed:
        client.checkpoints.download(model_id, tmp_path / "out", step=1)

    assert failed.value.path == "model.bin"
    assert list((tmp_path / "out").rglob("*")) == []  # no file, no partial


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_an_interrupted_download_leaves_no_final_file_and_the_next_run_completes_it(
    server_url: str,
    api_key: str,
    fast_retries: RetryPolicy,
    model_id: str,
    tmp_path: Path,
) -> None:
    data = os.urandom(16 * MIB)
    with Client(api_key=api_key, base_url=server_url) as client:
        client.checkpoints.save(model_id, step=1, path=make_folder(tmp_path / "c", {"m.bin": data}))
    host, port = server_url.removeprefix("http://").removesuffix("/v1").split(":")
    # Every connection is cut after 1 MiB from the server: each retry continues where the last
    # stopped, but six of them cannot finish 16 MiB.
    proxy = CuttingProxy((host, int(port)), cut_after=MIB, direction="down", cuts=-1)
    with (
        proxy.running(),
        Client(api_key=api_key, base_url=proxy.url, retry_policy=fast_retries) as client,
        pytest.raises(APIConnectionError),
    ):
        client.checkpoints.download(model_id, tmp_path / "out", step=1)

    assert not (tmp_path / "out" / "m.bin").exists()
    partial = tmp_path / "out" / f"m.bin{transfers.PARTIAL_SUFFIX}"
    kept = partial.stat().st_size
    assert 4 * MIB < kept < len(data)
    counting = CuttingProxy((host, int(port)))
    with (
        counting.running(),
        Client(api_key=api_key, base_url=counting.url, retry_policy=fast_retries) as client,
    ):
        result = client.checkpoints.download(model_id, tmp_path / "out", step=1)
    assert (tmp_path / "out" / "m.bin").read_bytes() == data
    assert counting.sent_down < len(data) - kept + 64 * 1024  # only the rest came
    assert not partial.exists()
    assert result.downloaded == ["m.bin"]


@pytest.mark.parametrize("blob_url", ["local"], indirect=True)
def test_save_merges_metrics_into_a_registered_step_and_refuses_other_content(
    client: Client, model_id: str, tmp_path: Path
) -> None:
    client.checkpoints.register(model_id, step=7, metrics={"loss": 0.2})
    folder = make_folder(tmp_path / "c", {"w.bin": b"one"})

    saved = client.checkpoints.save(model_id, step=7, path=folder, metrics={"acc": 0.9})
    assert saved.outcome == "merged"
    assert saved.checkpoint.metrics == {"loss": 0.2, "acc": 0.9}
    with pytest.raises(CkptError, match="loss"):
        client.checkpoints.save(model_id, step=7, path=folder, metrics={"loss": 0.3})

    (folder / "w.bin").write_bytes(b"two")
    with pytest.raises(FileConflictError) as conflict:
        client.checkpoints.upload(model_id, folder, step=7)
    assert conflict.value.paths == ["w.bin"]
    with pytest.raises(CkptError, match="no such file"):
        client.checkpoints.save(model_id, step=8, path=tmp_path / "missing")
    assert [c.step for c in client.checkpoints.list(model_id)] == [7]


@pytest.mark.anyio
async def test_the_async_client_saves_and_downloads(
    async_client: AsyncClient, tmp_path: Path
) -> None:
    model = await async_client.models.create(project="p", name="async", base_model="b")
    folder = make_folder(tmp_path / "c", CHECKPOINT)
    saved = await async_client.checkpoints.save(model.id, step=3, path=folder, parallel=2)
    assert saved.upload.files_sent == len(CHECKPOINT)
    one = await async_client.checkpoints.upload(
        model.id, folder / "config.json", checkpoint_id=saved.checkpoint.id
    )
    assert one.skipped == ["config.json"]
    files = await async_client.checkpoints.list_files(model.id, checkpoint_id=saved.checkpoint.id)
    assert len(files) == len(CHECKPOINT)
    result = await async_client.checkpoints.download(
        model.id, tmp_path / "out", checkpoint_id=saved.checkpoint.id
    )
    assert tree(tmp_path / "out") == CHECKPOINT
    assert sorted(result.downloaded) == sorted(CHECKPOINT)
