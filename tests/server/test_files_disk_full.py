"""A blob folder on a full disk (a small tmpfs of our own): uploads answer 507 and leave nothing, the
system check names the blob store, and uploads work again once there is room. Needs root (mount)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .helpers import register
from .test_files import blob_files, files_url, put, sha

MIB = 1024 * 1024


@pytest.fixture
def blob_url(tmp_path: Path) -> Iterator[str]:
    """A folder on an 8 MiB tmpfs (the database stays on the ordinary disk)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "small-disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], check=True)
    try:
        yield str(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Take every free byte of the disk under `folder` with one file, as something else would."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * MIB)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_answers_507_and_uploads_work_once_there_is_room(
    api: httpx.Client, model_id: str, blob_url: str
) -> None:
    checkpoint = register(api, model_id, 1)["id"]
    first = os.urandom(2 * MIB)
    assert put(api, model_id, checkpoint, "first", first).status_code == 201
    assert api.get("/system-check").json()["checks"]["blobs"] == "ok"
    filler = fill(Path(blob_url))
    before = blob_files(blob_url)

    refused = put(api, model_id, checkpoint, "second", b"x" * 300_000)

    assert refused.status_code == 507, refused.text
    assert "full" in refused.json()["detail"]
    assert api.get(files_url(model_id, checkpoint, "second")).status_code == 404
    assert [item["path"] for item in api.get(files_url(model_id, checkpoint)).json()["data"]] == [
        "first"
    ]
    assert blob_files(blob_url) == before, "no blob and no staged bytes left behind"
    check = api.get("/system-check")
    assert check.status_code == 503
    assert check.json()["checks"]["database"] == "ok"
    assert "full" in check.json()["checks"]["blobs"]
    assert api.get(files_url(model_id, checkpoint, "first")).content == first

    filler.unlink()

    assert api.get("/system-check").status_code == 200
    second = os.urandom(3 * MIB)
    stored = put(api, model_id, checkpoint, "second", second)
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == sha(second)
    assert api.get(files_url(model_id, checkpoint, "second")).content == second
