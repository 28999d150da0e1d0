"""Every failure the user can act on, mapped to a status and a body in one place."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ..blobs import errors as blob_errors
from ..storage import errors as storage_errors
from .auth import AuthenticationFailed, ReadOnlyKey
from .bodies import BodyUnreadable
from .hub import HubError
from .responses import JSONBytes

STATUS_BY_ERROR: dict[type[storage_errors.StorageError], int] = {
    storage_errors.KeyNotFound: 404,
    storage_errors.ModelNotFound: 404,
    storage_errors.CheckpointNotFound: 404,
    storage_errors.MetricNotFound: 404,
    storage_errors.FileNotFound: 404,
    storage_errors.UploadNotFound: 404,
    storage_errors.ModelNameTaken: 409,
    storage_errors.StepConflict: 409,
    storage_errors.FileConflict: 409,
}


class RequestInvalid(Exception):
    """Input the schemas cannot check (a file path in the URL, a header): 422 at `loc`."""

    def __init__(self, loc: list[str | int], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class Forbidden(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def validation_error(loc: list[str | int], msg: str, type_: str = "value_error") -> JSONBytes:
    return JSONBytes({"detail": [{"loc": loc, "msg": msg, "type": type_}]}, 422)


# Where a `loc` would name the client's own text: the key of a `metrics` object is a metric name.
INPUT_KEY_FIELDS = frozenset({"metrics"})
INPUT_KEY = "*"


def plain_loc(loc: Any) -> list[str | int]:
    """A validation error's `loc` without the client's input: a metric name (a NUL, 257 characters,
    a lone surrogate) becomes `*`, so `["body", "metrics", "*", "[key]"]`."""
    plain: list[str | int] = []
    for part in loc:
        if plain and plain[-1] in INPUT_KEY_FIELDS and not isinstance(part, int):
            plain.append(INPUT_KEY)
        else:
            plain.append(part if isinstance(part, int) else str(part))
    return plain


def _plain(error: dict[str, Any]) -> dict[str, Any]:
    # Only loc, msg and type: echoing `input` could leak values or fail to serialise (bytes, NaN).
    return {
        "loc": plain_loc(error.get("loc", ())),
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "value_error")),
    }


async def _request_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONBytes({"detail": [_plain(error) for error in exc.errors()]}, 422)


def storage_error_response(exc: storage_errors.StorageError) -> Response:
    if isinstance(exc, storage_errors.InvalidCursor):
        return validation_error(["query", "after"], exc.message)
    if isinstance(exc, storage_errors.TooManyMetrics):
        return validation_error(["body", "metrics"], exc.message)
    if isinstance(exc, storage_errors.UnstorableText):
        return validation_error(["body"], exc.message)
    if isinstance(exc, storage_errors.DatabaseUnavailable):
        return JSONBytes(
            {"detail": exc.message}, 503, headers={"Retry-After": str(exc.retry_after)}
        )
    return JSONBytes({"detail": exc.message}, STATUS_BY_ERROR.get(type(exc), 400))


async def _storage_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, storage_errors.StorageError)
    return storage_error_response(exc)


def blob_error_kind(exc: BaseException) -> str | None:
    """The metrics' label for a failure of the store itself; None for a client's mistake."""
    if isinstance(exc, blob_errors.BlobStoreUnavailable):
        return "full" if exc.full else "unavailable"
    if isinstance(exc, blob_errors.BlobNotFound):
        return "missing"  # a file's record names a blob the store no longer has
    return None


def blob_error_response(exc: blob_errors.BlobError) -> Response:
    if isinstance(exc, blob_errors.DigestMismatch):
        return validation_error(
            ["header", "content-digest"],
            "the body does not match the declared sha-256 digest; nothing was stored",
        )
    if isinstance(exc, blob_errors.UploadNotFound):
        return JSONBytes({"detail": "Upload not found"}, 404)
    if isinstance(exc, blob_errors.BlobStoreUnavailable) and exc.full:
        return JSONBytes({"detail": exc.message}, 507)
    return JSONBytes({"detail": exc.message}, 503, headers={"Retry-After": "10"})


async def _blob_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, blob_errors.BlobError)
    kind = blob_error_kind(exc)
    metrics = request.app.state.metrics
    if metrics is not None and kind is not None:
        metrics.blob_errors.labels(kind).inc()
    return blob_error_response(exc)


async def _request_invalid(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestInvalid)
    return validation_error(exc.loc, exc.msg)


async def _body_unreadable(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyUnreadable)
    if exc.media_type:
        return JSONBytes({"detail": exc.msg}, 415)
    return validation_error(["body"], exc.msg, "json_invalid")


async def _authentication_failed(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthenticationFailed)
    return JSONBytes({"detail": exc.detail}, 401, headers={"WWW-Authenticate": "Bearer"})


async def _forbidden(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Forbidden | ReadOnlyKey)
    return JSONBytes({"detail": exc.detail}, 403)


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    return JSONBytes({"detail": exc.detail}, exc.status_code, headers=headers)


# Fixed texts for `X-Error-Message` (a header holds no arbitrary text); the body says more.
_HUB_ERROR_MESSAGES = {
    "RepoNotFound": "Repository not found",
    "RevisionNotFound": "Revision not found",
    "EntryNotFound": "Entry not found",
}


def hub_error_response(exc: HubError) -> Response:
    """The Hub's error shape: `{"error": ...}` with `X-Error-Code`, which `huggingface_hub` turns
    into RepositoryNotFoundError, RevisionNotFoundError or EntryNotFoundError."""
    headers: dict[str, str] = {}
    if exc.code is not None:
        headers["X-Error-Code"] = exc.code
        headers["X-Error-Message"] = _HUB_ERROR_MESSAGES[exc.code]
    if exc.commit is not None:
        headers["X-Repo-Commit"] = exc.commit
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.status == 403:  # the client shows this header in its message for a 403
        headers["X-Error-Message"] = "This registry's Hub API is read-only"
    if exc.status == 405:
        headers["Allow"] = "GET, HEAD"
    return JSONBytes({"error": exc.message}, exc.status, headers=headers)


async def _hub_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    return hub_error_response(exc)


# nginx's status for "the client closed the request": never seen by the client (uvicorn drops it),
# but counted in the metrics and the access line.
CLIENT_CLOSED_REQUEST = 499


async def _client_disconnect(_: Request, exc: Exception) -> Response:
    # A client gone mid-body, or one closed for sending it too slowly (`slow_clients.py`): an
    # ordinary event, not a traceback in the log for each of hundreds of slow connections.
    assert isinstance(exc, ClientDisconnect)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HubError, _hub_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(storage_errors.StorageError, _storage_error)
    app.add_exception_handler(AuthenticationFailed, _authentication_failed)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(ReadOnlyKey, _forbidden)
    app.add_exception_handler(RequestInvalid, _request_invalid)
    app.add_exception_handler(BodyUnreadable, _body_unreadable)
    app.add_exception_handler(blob_errors.BlobError, _blob_error)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
