"""The Python SDK of ckpt-registry: ``Client``, ``AsyncClient``, their results and errors."""

from ._base import DEFAULT_BASE_URL, RetryPolicy
from ._client import AsyncClient, Client
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    CkptError,
    ConflictError,
    FileConflictError,
    FileIntegrityError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
)
from .pagination import AsyncCursorPage, AsyncPaginator, CursorPage
from .resources.files import DownloadedCheckpoint, SavedCheckpoint
from .transfers import DownloadResult, FileInfo, Progress, UploadResult
from .types import (
    Checkpoint,
    CheckpointDetail,
    CheckpointsDeleted,
    Model,
    ModelDeleted,
    RegisteredCheckpoint,
    RetentionResult,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncCursorPage",
    "AsyncPaginator",
    "AuthenticationError",
    "Checkpoint",
    "CheckpointDetail",
    "CheckpointsDeleted",
    "CkptError",
    "Client",
    "ConflictError",
    "CursorPage",
    "DownloadResult",
    "DownloadedCheckpoint",
    "FileConflictError",
    "FileInfo",
    "FileIntegrityError",
    "InternalServerError",
    "Model",
    "ModelDeleted",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "RateLimitError",
    "RegisteredCheckpoint",
    "RequestTooLargeError",
    "RetentionResult",
    "RetryPolicy",
    "SavedCheckpoint",
    "UnprocessableEntityError",
    "UploadResult",
]
