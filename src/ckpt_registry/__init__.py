"""ckpt-registry: a self-hostable model checkpoint registry for the W&B Training checkpoint API."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        FileConflictError,
        FileIntegrityError,
        InternalServerError,
        InvalidIdError,
        NotFoundError,
        PermissionDeniedError,
        RateLimitError,
        RequestTooLargeError,
        UnprocessableEntityError,
    )

__version__ = "0.1.0"


# The SDK's names are imported on first use (PEP 562): the server, which imports this package too,
# does not load the SDK and its HTTP client (httpx, which pulls in rich and click), ~15 MB of RSS.
def __getattr__(name: str) -> Any:
    # Every public name but __version__ (a global, so never looked up here) is the SDK's.
    if name in __all__:
        value = getattr(importlib.import_module("ckpt_registry.client"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ckpt_registry' has no attribute {name!r}")


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
    "FileConflictError",
    "FileIntegrityError",
    "InternalServerError",
    "InvalidIdError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "UnprocessableEntityError",
    "__version__",
]
