"""ckpt-registry: a self-hostable model checkpoint registry for the W&B Training checkpoint API."""

from ckpt_registry.client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    CkptError,
    Client,
    ConflictError,
    InternalServerError,
    InvalidIdError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "CkptError",
    "Client",
    "ConflictError",
    "InternalServerError",
    "InvalidIdError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "UnprocessableEntityError",
    "__version__",
]
