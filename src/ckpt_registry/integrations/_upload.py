"""Upload a folder's files to a checkpoint over the files routes (shared/CONTRACT.md section 6).

Kept small on purpose: the SDK's own transfers (``client.checkpoints.upload``, with skipping,
parallelism and progress) are being built beside this; once they are in, the callback and the
importer call them and this module goes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

from ..client import Client
from ..client._base import APIRequest, path_segment

__all__ = ["upload_folder"]

_CHUNK = 4 * 1024 * 1024


class _FileBody:
    """A file's bytes, read again from the start on each iteration, so a retry can resend it."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __iter__(self) -> Iterator[bytes]:
        with self._path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                yield chunk


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def upload_folder(client: Client, model_id: str, checkpoint_id: str, folder: Path) -> int:
    """PUT every file under ``folder`` (at its path relative to it) to the checkpoint; the
    server checks each against its declared sha256. Returns the number of files."""
    base = (
        f"preview/models/{path_segment(model_id)}/checkpoints/{path_segment(checkpoint_id)}/files"
    )
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    for path in files:
        relative = path.relative_to(folder).as_posix()
        digest = base64.b64encode(_sha256(path)).decode("ascii")
        client._send(
            APIRequest(
                "PUT",
                f"{base}/{'/'.join(path_segment(part) for part in relative.split('/'))}",
                lambda _response: None,
                # The same content again is a 200, so resending after a lost answer is safe.
                idempotent=True,
                content=_FileBody(path),
                headers={
                    "Content-Length": str(path.stat().st_size),
                    "Content-Digest": f"sha-256=:{digest}:",
                },
            )
        )
    return len(files)
