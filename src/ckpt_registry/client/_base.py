"""What ``Client`` and ``AsyncClient`` share: configuration, request building, retries, errors.

Each client's ``_send`` only does the I/O (send, read, close, sleep); every decision between
those steps (what to retry, how long to wait, which error to raise) is made once, by ``Attempts``.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ..contract import API_PREFIX
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    CkptError,
    InvalidIdError,
    status_error,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "APIRequest",
    "Attempts",
    "BaseClient",
    "RequestContent",
    "Retry",
    "RetryPolicy",
]

T = TypeVar("T")

#: A raw request body: bytes, or chunks of bytes (for bodies too large to hold in memory).
RequestContent = bytes | Iterable[bytes] | AsyncIterable[bytes]

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2

MISSING_API_KEY = (
    "No API key: pass api_key= to the client or set the CKPT_API_KEY environment variable "
    "(`ckpt keys create` makes one)."
)

# 408 and 429 say "try again"; 5xx may be a restart or a database blip. 409 is not here: on this
# API it means "conflicting data", which no retry can fix.
_RETRY_STATUSES = frozenset({408, 429})

try:
    _VERSION = metadata.version("ckpt-registry")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0.0.0"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long retries wait: exponential backoff from ``initial_delay`` doubling up to
    ``max_delay`` with up to 25% jitter, or the server's ``Retry-After``; a retry that would end
    more than ``max_total`` seconds after the first attempt started is not made."""

    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_total: float = 60.0

    def backoff(self, attempt: int) -> float:
        delay = min(self.initial_delay * 2.0**attempt, self.max_delay)
        return delay * (1 - 0.25 * random.random())


@dataclass(frozen=True, slots=True)
class APIRequest(Generic[T]):
    """One call to the API and how to read its answer.

    ``idempotent`` says whether sending it twice is safe, which is what allows a retry. The body
    is ``json``, or ``content`` sent as it is (with its ``Content-Type`` etc. in ``headers``).
    With ``stream``, ``parse`` gets the response before its body is read and must not read it:
    whatever ``parse`` returns then owns the open response (it is closed if ``parse`` raises).
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    idempotent: bool
    params: Mapping[str, str | int | None] | None = None
    json: Any = None
    content: RequestContent | None = None
    headers: Mapping[str, str] | None = None
    stream: bool = False
    # False for a presigned URL to a blob store: the API key goes to the registry only.
    authenticated: bool = True

    def __post_init__(self) -> None:
        if self.json is not None and self.content is not None:
            raise ValueError("A request has a json body or a raw content body, not both")

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again: a one-shot iterator (a generator, an open file)
        is used up by the first attempt, so that attempt is the only one."""
        return not isinstance(self.content, Iterator | AsyncIterator)

    def with_params(self, **params: str | int | None) -> APIRequest[T]:
        return replace(self, params={**(self.params or {}), **params})


def path_segment(value: str, *, what: str = "id", reserved: frozenset[str] = frozenset()) -> str:
    """``value`` quoted as one path segment, so an id can never reach another route.

    Quoting is not enough for a few values: the server decodes ``%2F`` before routing, URLs drop
    ``.`` and ``..`` segments, and a name in ``reserved`` is a sibling route (``.../best``).
    Those raise :class:`InvalidIdError` before any request."""
    if not value or value in (".", "..") or "/" in value or value in reserved:
        hint = (
            "; to find a model by its name: client.models.find(project=..., name=...)"
            if what == "model id"
            else ""
        )
        raise InvalidIdError(f"{value!r} is not a {what} (the API's ids are UUIDs{hint})")
    return quote(value, safe="")


def parse_retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number, or an HTTP date); None when absent or unreadable."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
        return max(seconds, 0.0)
    return seconds if seconds >= 0 else None


class BaseClient:
    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        retry_policy: RetryPolicy | None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get("CKPT_API_KEY")
        if not api_key:
            raise CkptError(MISSING_API_KEY)
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.api_key = api_key
        self.base_url = (base_url or os.environ.get("CKPT_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        self.timeout = DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout)
        self.max_retries = max_retries
        self.retry_policy = retry_policy or RetryPolicy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @property
    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": f"ckpt-registry-python/{_VERSION}",
        }

    def _url(self, path: str) -> str:
        """A path under the API (``preview/models``), or an ``href`` the server gave: an absolute
        URL (presigned, to a blob store) or a path from the server's root (``/v1/preview/...``,
        taken relative to ``base_url`` so a registry behind a path prefix still works)."""
        if "://" in path:
            return path
        if path.startswith(API_PREFIX + "/"):
            path = path.removeprefix(API_PREFIX)
        return f"{self.base_url}/{path.lstrip('/')}"

    def _build_request(
        self, http: httpx.Client | httpx.AsyncClient | None, request: APIRequest[Any]
    ) -> httpx.Request:
        """The request as ``http`` sends it; with None, as it stands alone (file bytes go over
        connections of their own, client/wire.py, which set their own timeouts)."""
        params = {k: v for k, v in (request.params or {}).items() if v is not None}
        url = self._url(request.path)
        headers = {
            **(self._headers if request.authenticated else {}),
            **(request.headers or {}),
        }
        # params: None, not {}: merging even no parameters re-encodes a URL's query, which would
        # break the signature of a presigned URL.
        if http is None:
            return httpx.Request(
                request.method,
                url,
                params=params or None,
                json=request.json,
                content=request.content,
                headers=headers,
            )
        return http.build_request(
            request.method,
            url,
            params=params or None,
            json=request.json,
            content=request.content,
            headers=headers,
            timeout=self.timeout,
        )


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait ``delay`` seconds, then send the request again."""

    delay: float


class Attempts(Generic[T]):
    """Every decision of one API call, and none of its I/O.

    A client's ``_send`` loops: it sends ``next_request()`` and hands what happened to
    ``answered`` (a response, the body of an error answer read) or ``failed`` (the transport
    error). Each returns the call's result or a :class:`Retry`, or raises the error to give up with.
    """

    def __init__(self, client: BaseClient, request: APIRequest[T]) -> None:
        self._client = client
        self._request = request
        self._attempt = 0
        self._started = time.monotonic()

    def run(
        self,
        http: httpx.Client | None,
        exchange: Callable[[httpx.Request], httpx.Response],
        sleep: Callable[[float], None],
    ) -> T:
        """The whole call, blocking: ``exchange`` sends one attempt's request and returns the
        response (its body read, unless the request streams); ``sleep`` waits between attempts.
        An error answer's body is read for its detail, then the response is closed."""
        while True:
            http_request = self.next_request(http)
            try:
                response = exchange(http_request)
                if not response.is_success:
                    try:
                        response.read()
                    finally:
                        response.close()
            except httpx.TransportError as exc:
                outcome: T | Retry = self.failed(http_request, exc)
            else:
                try:
                    outcome = self.answered(response)
                except BaseException:
                    response.close()
                    raise
            if not isinstance(outcome, Retry):
                return outcome
            sleep(outcome.delay)

    def next_request(self, http: httpx.Client | httpx.AsyncClient | None) -> httpx.Request:
        return self._client._build_request(http, self._request)

    def answered(self, response: httpx.Response) -> T | Retry:
        if response.is_success:
            return self._request.parse(response)
        return self._retry_or_raise(status_error(response), None, response)

    def failed(self, request: httpx.Request, exc: httpx.TransportError) -> Retry:
        error = (
            APITimeoutError(request=request)
            if isinstance(exc, httpx.TimeoutException)
            else APIConnectionError(request=request)
        )
        return self._retry_or_raise(error, exc, None)

    def _retry_or_raise(
        self, error: APIError, cause: Exception | None, response: httpx.Response | None
    ) -> Retry:
        delay = self._retry_delay(response)
        if delay is None:
            raise error from cause
        self._attempt += 1
        return Retry(delay)

    def _retry_delay(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retrying, or None to give up.

        ``response`` is None when the request failed without one (connection error, timeout).
        """
        request, client = self._request, self._client
        # Both are needed: a request that is safe to repeat but whose body was a one-shot
        # iterator cannot be repeated, as the first attempt used the body up.
        if not (request.idempotent and request.replayable):
            return None
        if self._attempt >= client.max_retries:
            return None
        if response is not None and not (
            response.status_code in _RETRY_STATUSES or response.status_code >= 500
        ):
            return None
        retry_after = parse_retry_after(response) if response is not None else None
        policy = client.retry_policy
        delay = retry_after if retry_after is not None else policy.backoff(self._attempt)
        if time.monotonic() - self._started + delay > policy.max_total:
            return None
        return delay
