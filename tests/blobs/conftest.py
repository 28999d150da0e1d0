"""Blob store fixtures: every test runs on the local folder and on S3, served by moto's real S3 server
(started once per session on a free loopback port, each test in a bucket of its own)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import botocore.session
import pytest

from ckpt_registry.blobs import BlobStore, open_blob_store
from ckpt_registry.blobs.s3 import S3BlobStore

MIB = 1024 * 1024
# The smallest part S3 (and moto) accept: three parts is an 11 MiB blob.
S3_PART_BYTES = 5 * MIB


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        moto = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if moto.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        moto.terminate()
        moto.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> str:
    """Credentials, region and endpoint as an operator sets them: the standard AWS variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return moto_endpoint


def create_bucket(endpoint: str) -> str:
    bucket = f"blobs-{uuid.uuid4().hex[:12]}"
    s3 = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    )
    s3.create_bucket(Bucket=bucket)
    return bucket


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
async def s3_store(aws_env: str) -> AsyncIterator[S3BlobStore]:
    blobs = open_blob_store(f"s3://{create_bucket(aws_env)}/p")
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
