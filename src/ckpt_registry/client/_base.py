"""What ``Client`` and ``AsyncClient`` share: configuration, request building, retries, errors.

Only the two ``send`` loops differ (one sleeps with ``time``, the other with ``anyio``); every
decision they make (what to retry, how long to wait, which error to raise) is made here once.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import CkptError

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "APIRequest", "BaseClient", "RetryPolicy"]

T = TypeVar("T")

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

    ``idempotent`` says whether sending it twice is safe, which is what allows a retry.
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    idempotent: bool
    params: Mapping[str, str | int | None] | None = None
    json: Any = None

    def with_params(self, **params: str | int | None) -> APIRequest[T]:
        return APIRequest(
            self.method,
            self.path,
            self.parse,
            self.idempotent,
            {**(self.params or {}), **params},
            self.json,
        )


def path_segment(value: str) -> str:
    """``value`` quoted as one path segment, so an id can never reach another route."""
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
        return f"{self.base_url}/{path.lstrip('/')}"

    def _build_request(
        self, http: httpx.Client | httpx.AsyncClient, request: APIRequest[Any]
    ) -> httpx.Request:
        params = {k: v for k, v in (request.params or {}).items() if v is not None}
        return http.build_request(
            request.method,
            self._url(request.path),
            params=params,
            json=request.json,
            headers=self._headers,
            timeout=self.timeout,
        )

    def _retry_delay(
        self,
        request: APIRequest[Any],
        attempt: int,
        response: httpx.Response | None,
        started: float,
    ) -> float | None:
        """Seconds to wait before retrying, or None to give up.

        ``response`` is None when the request failed without one (connection error, timeout).
        """
        if not request.idempotent or attempt >= self.max_retries:
            return None
        if response is not None and not (
            response.status_code in _RETRY_STATUSES or response.status_code >= 500
        ):
            return None
        retry_after = parse_retry_after(response) if response is not None else None
        delay = retry_after if retry_after is not None else self.retry_policy.backoff(attempt)
        if time.monotonic() - started + delay > self.retry_policy.max_total:
            return None
        return delay
