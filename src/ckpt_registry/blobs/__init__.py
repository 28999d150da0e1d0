"""Content-addressed blob storage for checkpoint files: a local folder or an S3-compatible bucket."""

from .base import (
    CHUNK_BYTES,
    READ_CHUNK_BYTES,
    BlobInfo,
    BlobStore,
    OnDigest,
    PresignedPut,
    StagedUpload,
    StoredBlob,
    Upload,
    check_sha256,
)
from .errors import (
    BlobError,
    BlobNotFound,
    BlobStoreUnavailable,
    DigestMismatch,
    InvalidBlobUrl,
    UploadInUse,
    UploadNotFound,
)
from .urls import default_blob_url, open_blob_store

__all__ = [
    "CHUNK_BYTES",
    "READ_CHUNK_BYTES",
    "BlobError",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreUnavailable",
    "DigestMismatch",
    "InvalidBlobUrl",
    "OnDigest",
    "PresignedPut",
    "StagedUpload",
    "StoredBlob",
    "Upload",
    "UploadInUse",
    "UploadNotFound",
    "check_sha256",
    "default_blob_url",
    "open_blob_store",
]
