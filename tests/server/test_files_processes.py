"""Two `ckpt serve` processes on one PostgreSQL database and one blob store (a shared folder, or S3) serve
one set of files: what one stores the other serves, and an upload begun on one completes on the other."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import pytest

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import open_storage
from tests import pg

# The moto fixtures, found by name.
from tests.moto import MOTO_UPLOAD_TTL_SECONDS, create_bucket, moto_endpoint  # noqa: F401

from .helpers import create_model, register
from .test_files import files_url, sha

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    admin_url = pg.postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
    with pg.fresh_database(admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def key(database_url: str) -> str:
    key = generate_key()

    async def create() -> None:
        storage = open_storage(database_url)
        await storage.open()
        try:
            await storage.create_key("default", "test", hash_key(key))
        finally:
            await storage.close()

    asyncio.run(create())
    return key


@pytest.fixture(scope="module", params=["local", "s3"])
def clients(
    request: pytest.FixtureRequest,
    database_url: str,
    key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """A client of each of two servers; both use one blob store (start_servers gives them one
    folder; on S3 one bucket)."""
    env = {}
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        env = {
            "CKPT_BLOB_URL": f"s3://{create_bucket(endpoint)}/shared",
            "CKPT_UPLOAD_TTL_SECONDS": str(MOTO_UPLOAD_TTL_SECONDS),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    servers = pg.start_servers(database_url, 2, tmp_path_factory.mktemp("servers"), env)
    first, second = (server.client(key) for server in servers)
    try:
        yield first, second
    finally:
        first.close()
        second.close()
        for server in servers:
            server.stop()


def test_a_file_stored_through_one_server_downloads_through_the_other(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    one, other = clients
    model = create_model(one, f"stored-{os.urandom(4).hex()}")
    checkpoint = register(one, model, 1)["id"]
    data = os.urandom(3 * MIB + 5)

    assert (
        one.put(files_url(model, checkpoint, "model.safetensors"), content=data).status_code == 201
    )

    got = other.get(files_url(model, checkpoint, "model.safetensors"))
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["etag"] == f'"{sha(data)}"'
    ranged = other.get(
        files_url(model, checkpoint, "model.safetensors"), headers={"Range": "bytes=-10"}
    )
    assert ranged.status_code == 206
    assert ranged.content == data[-10:]


def test_an_upload_begun_on_one_server_completes_on_the_other(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    one, other = clients
    model = create_model(one, f"resumed-{os.urandom(4).hex()}")
    checkpoint = register(one, model, 1)["id"]
    # More than one 8 MiB S3 part, sent as a piece that stays staged beside the parts and the rest.
    data = os.urandom(9 * MIB + 7)
    started = one.post(
        f"/preview/models/{model}/checkpoints/{checkpoint}/uploads", json={"path": "weights"}
    )
    assert started.status_code == 201, started.text
    upload = f"/preview/uploads/{started.json()['id']}"
    first = one.patch(upload, content=data[: 4 * MIB], headers={"Upload-Offset": "0"})
    assert first.status_code == 204, first.text

    offset = other.head(upload)
    assert offset.status_code == 200
    assert offset.headers["upload-offset"] == str(4 * MIB)
    rest = other.patch(upload, content=data[4 * MIB :], headers={"Upload-Offset": str(4 * MIB)})
    assert rest.status_code == 204, rest.text
    assert one.head(upload).headers["upload-offset"] == str(len(data))
    done = other.post(upload + "/complete", json={"sha256": sha(data)})
    assert done.status_code == 201, done.text

    assert one.get(files_url(model, checkpoint, "weights")).content == data
    assert one.head(upload).status_code == 404
