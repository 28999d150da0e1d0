"""Errors the SDK raises: one class per failure a caller can act on.

CkptError                       the root: anything this SDK raises on purpose (e.g. no API key)
 ├── InvalidIdError             an id that cannot be a URL path segment (e.g. "hf/run1"); no request
 └── APIError                   a request to the registry failed
      ├── APIConnectionError    the server could not be reached, or the connection broke
      │    └── APITimeoutError  the request timed out
      └── APIStatusError        the server answered with a 4xx or 5xx status
           ├── AuthenticationError        401: missing, unknown or revoked key
           ├── PermissionDeniedError      403: e.g. creating a model for another entity
           ├── NotFoundError              404: unknown model, checkpoint or metric
           ├── ConflictError              409: model name taken; step registered with other metrics
           ├── RequestTooLargeError       413: request body over 1 MiB
           ├── UnprocessableEntityError   422: invalid input (``detail`` is the list of errors)
           ├── RateLimitError             429
           └── InternalServerError        >= 500
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "CkptError",
    "ConflictError",
    "InternalServerError",
    "InvalidIdError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "UnprocessableEntityError",
]

#: What the server puts in ``detail``: a message, or FastAPI's list of validation errors.
Detail = str | list[dict[str, Any]] | None


class CkptError(Exception):
    """Base class of every error this SDK raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidIdError(CkptError, ValueError):
    """An id that cannot be sent as one URL path segment ('/', '.', '..', a sibling route's
    name): no request is made, since the server would route it elsewhere. The API's ids are
    UUIDs; a model is found by its name with ``client.models.find(project=..., name=...)``."""


class APIError(CkptError):
    """A request to the registry failed; ``request`` is the one that failed."""

    def __init__(self, message: str, *, request: httpx.Request) -> None:
        super().__init__(message)
        self.request = request


class APIConnectionError(APIError):
    def __init__(self, *, request: httpx.Request, message: str | None = None) -> None:
        super().__init__(
            message or f"Connection error: could not reach {request.url}", request=request
        )


class APITimeoutError(APIConnectionError):
    def __init__(self, *, request: httpx.Request) -> None:
        super().__init__(
            request=request, message=f"Request timed out: {request.method} {request.url}"
        )


class APIStatusError(APIError):
    """The server answered with an error status; ``detail`` is what it said about it."""

    def __init__(self, message: str, *, response: httpx.Response, detail: Detail) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status_code = response.status_code
        self.detail = detail


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class RequestTooLargeError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    """The error for an error ``response``, with the server's ``detail`` in its message."""
    detail = _read_detail(response)
    if response.status_code >= 500:
        cls: type[APIStatusError] = InternalServerError
    else:
        cls = _STATUS_ERRORS.get(response.status_code, APIStatusError)
    return cls(_describe(response, detail), response=response, detail=detail)


def _read_detail(response: httpx.Response) -> Detail:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        return detail
    return None if detail is None else str(detail)


def _describe(response: httpx.Response, detail: Detail) -> str:
    """``"404 Model not found"``; validation errors as ``"422 query.limit: <msg>; ..."``."""
    if isinstance(detail, list):
        text = "; ".join(
            ".".join(str(part) for part in item.get("loc", ())) + f": {item.get('msg', '')}"
            for item in detail
        )
    else:
        text = detail or response.reason_phrase
    return f"{response.status_code} {text}".rstrip()
