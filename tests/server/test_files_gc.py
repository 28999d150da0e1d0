"""`ckpt db gc` and file contents: after files, checkpoints and models are deleted it removes exactly
the blobs nothing references (after the grace period), on both databases and both blob stores."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from ckpt_registry.cli.main import cli

# The moto fixtures, found by name.
from tests.moto import aws_env, create_bucket, moto_endpoint  # noqa: F401

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
