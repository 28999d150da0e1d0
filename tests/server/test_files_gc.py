"""`ckpt db gc` and file contents: after files, checkpoints and models are deleted it removes exactly
the blobs nothing references (after the grace period), and what a killed PUT staged but not a
resumable upload's bytes, on both databases and both blob stores."""

from __future__ import annotations

import asyncio
import gc as gc_module
import os
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from ckpt_registry.blobs import open_blob_store
from ckpt_registry.cli.main import cli

# The moto fixtures, found by name.
from tests.moto import MIB, aws_env, create_bucket, moto_endpoint  # noqa: F401

from ..conftest import RunningServer
from .helpers import create_model, delete_steps, register
from .test_files import blob_files, files_url, put, sha


@pytest.fixture(params=["local", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "blobs")
    return f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/registry"


def gc(server: RunningServer, blob_url: str, *args: str) -> str:
    result = CliRunner().invoke(
        cli,
        ["db", "gc", "--database-url", server.database_url, "--blob-url", blob_url, *args],
    )
    assert result.exit_code == 0, result.output
    return result.output


def stored_contents(blob_url: str) -> set[str]:
    """The sha256 of every blob in the store."""
    return {name.rsplit("/", 1)[-1] for name in blob_files(blob_url) if "/sha256/" in name}


def test_gc_removes_exactly_the_unreferenced_blobs(
    server: RunningServer, api: httpx.Client, model_id: str, blob_url: str
) -> None:
    kept, shared = b"kept weights" * 100, b"shared tokenizer" * 100
    of_file, of_checkpoint, of_model = b"deleted file" * 10, b"deleted step" * 20, b"model" * 30
    live = register(api, model_id, 1)["id"]
    doomed = register(api, model_id, 2)["id"]
    assert put(api, model_id, live, "weights", kept).status_code == 201
    assert put(api, model_id, live, "tokenizer.json", shared).status_code == 201
    assert put(api, model_id, live, "old", of_file).status_code == 201
    assert put(api, model_id, doomed, "tokenizer.json", shared).status_code == 201
    assert put(api, model_id, doomed, "weights", of_checkpoint).status_code == 201
    other_model = create_model(api, "to-delete")
    step = register(api, other_model, 1)["id"]
    assert put(api, other_model, step, "weights", of_model).status_code == 201
    everything = {sha(data) for data in (kept, shared, of_file, of_checkpoint, of_model)}
    assert stored_contents(blob_url) == everything

    assert api.delete(files_url(model_id, live, "old")).status_code == 204
    delete_steps(api, model_id, [2])
    assert api.delete(f"/preview/models/{other_model}").status_code == 200

    # Within the grace period (an hour by default) nothing goes.
    assert "removed 0 unreferenced blobs (0 bytes)" in gc(server, blob_url)
    assert stored_contents(blob_url) == everything

    output = gc(server, blob_url, "--blob-grace", "0")

    freed = len(of_file) + len(of_checkpoint) + len(of_model)
    assert f"removed 3 unreferenced blobs ({freed} bytes)" in output
    assert stored_contents(blob_url) == {sha(kept), sha(shared)}
    assert api.get(files_url(model_id, live, "weights")).content == kept
    assert api.get(files_url(model_id, live, "tokenizer.json")).content == shared
    assert "removed 0 unreferenced blobs (0 bytes)" in gc(server, blob_url, "--blob-grace", "0")
    assert stored_contents(blob_url) == {sha(kept), sha(shared)}


def leave_a_killed_put(blob_url: str) -> str:
    """What a server killed mid-PUT leaves in the store: a single-request upload with a part's
    worth of bytes, never finished, aborted or closed. Returns its id."""

    async def stage() -> str:
        store = open_blob_store(blob_url)
        await store.open()
        try:
            upload = await store.begin_upload()
            await upload.write(os.urandom(9 * MIB))  # over one 8 MiB S3 part
            return upload.id
        finally:
            await store.close()  # waits for the local store's last write

    upload_id = asyncio.run(stage())
    gc_module.collect()  # the upload object, and with it the local file's lock, is gone
    return upload_id


def test_gc_removes_what_a_killed_put_staged_and_keeps_resumable_uploads(
    server: RunningServer, api: httpx.Client, model_id: str, blob_url: str
) -> None:
    checkpoint_id = register(api, model_id, 1)["id"]
    started = api.post(
        f"/preview/models/{model_id}/checkpoints/{checkpoint_id}/uploads", json={"path": "w"}
    )
    upload = f"/preview/uploads/{started.json()['id']}"
    data = os.urandom(2 * MIB)
    assert api.patch(upload, content=data[:MIB], headers={"Upload-Offset": "0"}).is_success
    cut = leave_a_killed_put(blob_url)
    assert any(cut in name for name in blob_files(blob_url))

    output = gc(server, blob_url)
    if blob_url.startswith("s3://"):
        # No lock on S3: only an upload unwritten for --put-idle (an hour by default) is dropped.
        assert "dropped uploads" not in output
        assert any(cut in name for name in blob_files(blob_url))
        output = gc(server, blob_url, "--put-idle", "0")
    assert "removed the staged bytes of 1 dropped uploads" in output
    assert not any(cut in name for name in blob_files(blob_url))

    # The resumable upload waits for its client (the upload TTL, 7 days), who finishes it.
    assert api.head(upload).headers["upload-offset"] == str(MIB)
    assert api.patch(upload, content=data[MIB:], headers={"Upload-Offset": str(MIB)}).is_success
    done = api.post(f"{upload}/complete", json={"sha256": sha(data)})
    assert done.status_code == 201, done.text
    assert api.get(files_url(model_id, checkpoint_id, "w")).content == data
