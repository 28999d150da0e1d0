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
    InternalServerError,
    InvalidIdError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
)
from .pagination import AsyncCursorPage, AsyncPaginator, CursorPage
from .types import (
    Checkpoint,
    CheckpointDetail,
    CheckpointsDeleted,
    DeletedStep,
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
    "DeletedStep",
    "InternalServerError",
    "InvalidIdError",
    "Model",
    "ModelDeleted",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RegisteredCheckpoint",
    "RequestTooLargeError",
    "RetentionResult",
    "RetryPolicy",
    "UnprocessableEntityError",
]
