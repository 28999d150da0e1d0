"""Errors the blob stores raise on purpose, each with its message (the server maps each to a status).

BlobError
 ├── BlobStoreUnavailable     the store cannot serve now: disk full, read-only, S3 down or refusing (503)
 ├── BlobNotFound             no blob with that sha256 (404)
 ├── DigestMismatch           the bytes do not hash to the declared sha256 (422); nothing was stored
 ├── UploadNotFound           no staged upload with that id: never begun, finished, aborted or expired
 ├── UploadInUse              another writer holds the staged upload (409; the local store only)
 └── InvalidBlobUrl           a --blob-url the stores do not understand (also a ValueError)
"""

from __future__ import annotations

__all__ = [
    "BlobError",
    "BlobNotFound",
    "BlobStoreUnavailable",
    "DigestMismatch",
    "InvalidBlobUrl",
    "UploadInUse",
    "UploadNotFound",
]


class BlobError(Exception):
    """Base class of every error a blob store raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BlobStoreUnavailable(BlobError):
    """The store cannot serve the request now; `reason` says why in words an operator can act on.
    `full`: the disk (or the quota) under the store is full, which the server answers with 507."""

    def __init__(self, reason: str, *, full: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.full = full


class BlobNotFound(BlobError):
    def __init__(self, sha256: str) -> None:
        super().__init__(f"no blob with sha256 {sha256}")
        self.sha256 = sha256


class DigestMismatch(BlobError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the content's sha256 is {actual}, not the declared {expected}")
        self.expected = expected
        self.actual = actual


class UploadNotFound(BlobError):
    def __init__(self, upload_id: str) -> None:
        super().__init__(f"no staged upload with id {upload_id!r}")
        self.upload_id = upload_id


class UploadInUse(BlobError):
    def __init__(self, upload_id: str) -> None:
        super().__init__(f"upload {upload_id!r} is being written by another request")
        self.upload_id = upload_id


class InvalidBlobUrl(BlobError, ValueError):
    pass
