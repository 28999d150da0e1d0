"""Blob store fixtures: every test runs on the local folder and on S3, served by moto's real S3 server
(started once per session on a free loopback port, each test in a bucket of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ckpt_registry.blobs import BlobStore, open_blob_store
from ckpt_registry.blobs.s3 import S3BlobStore
from tests.moto import (  # noqa: F401  (fixtures, found by name)
    MIB,
    S3_PART_BYTES,
    aws_env,
    create_bucket,
    free_port,
    moto_endpoint,
)


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        blobs = open_blob_store(str(tmp_path / "blobs"))
    else:
        endpoint = request.getfixturevalue("aws_env")
        blobs = open_blob_store(f"s3://{create_bucket(endpoint)}/some/prefix")
        assert isinstance(blobs, S3BlobStore)
        blobs.part_bytes = S3_PART_BYTES
    await blobs.open()
    try:
        yield blobs
    finally:
        await blobs.close()


@pytest.fixture
async def s3_store(request: pytest.FixtureRequest) -> AsyncIterator[S3BlobStore]:
    blobs = open_blob_store(f"s3://{create_bucket(request.getfixturevalue('aws_env'))}/p")
    assert isinstance(blobs, S3BlobStore)
    blobs.part_bytes = S3_PART_BYTES
    await blobs.open()
    try:
        yield blobs
    finally:
        await blobs.close()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
