"""Which store a blob URL names, and the default beside a SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_registry.blobs import InvalidBlobUrl, default_blob_url, open_blob_store
from ckpt_registry.blobs.local import LocalBlobStore
from ckpt_registry.blobs.s3 import S3BlobStore


def test_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url, root in [
        ("blobs", tmp_path / "blobs"),
        (str(tmp_path / "x"), tmp_path / "x"),
        (f"file://{tmp_path}/y", tmp_path / "y"),
        (f"file://localhost{tmp_path}/with%20space", tmp_path / "with space"),
    ]:
        store = open_blob_store(url)
        assert isinstance(store, LocalBlobStore)
        assert store.root == root


def test_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    store = open_blob_store("s3://weights/registry/prod/")
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "weights",
        "registry/prod/",
        "http://127.0.0.1:9000",
    )
    assert store.blob_key("ab" * 32) == f"registry/prod/sha256/{'ab' * 32}"

    other = open_blob_store("s3://weights", endpoint_url="http://minio:9000")
    assert isinstance(other, S3BlobStore)
    assert (other.prefix, other.endpoint_url) == ("", "http://minio:9000")


@pytest.mark.parametrize(
    "url", ["", "s3://", "s3:///prefix", "http://example.com/blobs", "file://host/x", "gs://b/p"]
)
def test_bad_urls_say_what_to_set(url: str) -> None:
    with pytest.raises(InvalidBlobUrl, match="CKPT_BLOB_URL"):
        open_blob_store(url)


def test_default_beside_sqlite(tmp_path: Path) -> None:
    assert default_blob_url(f"sqlite:///{tmp_path}/ckpt.db") == f"file://{tmp_path}/ckpt.db-blobs"
    assert default_blob_url("postgresql://postgres@127.0.0.1:5432/ckpt") is None
