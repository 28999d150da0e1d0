"""moto's real S3 server for the tests that need S3: one process per test session on a free loopback
port (started by whichever test asks first), a bucket of its own for each test, and the AWS variables
an operator would set. Import the fixtures into a conftest or a test module to use them."""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

MIB = 1024 * 1024
# The smallest part S3 (and moto) accept.
S3_PART_BYTES = 5 * MIB
# moto lists every multipart upload as initiated in 2010, so a collector expiring uploads older than
# its TTL takes one just begun (with no part yet) for an old one: a server under test whose startup
# collector runs while a test begins an upload needs a TTL longer than that.
MOTO_UPLOAD_TTL_SECONDS = 100 * 365 * 24 * 3600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Moto:
    """The one moto_server of this process, shared by every module that imports the fixtures (each
    import is a fixture of its own to pytest); stopped when the last user's session ends."""

    process: subprocess.Popen[bytes] | None = None
    endpoint = ""
    users = 0

    @classmethod
    def acquire(cls, log: Path) -> str:
        if cls.process is None:
            cls.endpoint = _start(log, cls)
        cls.users += 1
        return cls.endpoint

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users == 0 and cls.process is not None:
            cls.process.terminate()
            cls.process.wait(timeout=10)
            cls.process = None


def _start(log: Path, holder: type[_Moto]) -> str:
    port = free_port()
    with open(log, "wb") as out:
        moto = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    holder.process = moto
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"http://127.0.0.1:{port}"
        except OSError:
            if moto.poll() is not None or time.monotonic() > deadline:
                moto.kill()
                moto.wait(timeout=10)
                holder.process = None
                raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    endpoint = _Moto.acquire(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield endpoint
    finally:
        _Moto.release()


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
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return bucket


@functools.cache
def s3_client(endpoint: str) -> Any:
    """A plain (synchronous) botocore client, to look at a bucket the way an operator would. One per
    endpoint: a new botocore session parses the S3 model again, 0.13 s each time here."""
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def bucket_contents(endpoint: str, bucket: str) -> dict[str, int]:
    """Every object in the bucket with its size, and every multipart upload still open (as
    `<key> (parts)`, size -1): all that a store keeps there, staged bytes included."""
    client = s3_client(endpoint)
    contents: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        contents |= {item["Key"]: item["Size"] for item in page.get("Contents", [])}
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        contents |= {f"{item['Key']} (parts)": -1 for item in page.get("Uploads", [])}
    return contents
