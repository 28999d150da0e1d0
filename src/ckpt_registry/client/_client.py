"""``Client`` and ``AsyncClient``: the two ways to talk to a registry."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TypeVar

import anyio
import httpx

from ._base import DEFAULT_MAX_RETRIES, APIRequest, BaseClient, RetryPolicy
from .errors import APIConnectionError, APIError, APITimeoutError, status_error
from .pagination import AsyncCursorPage, CursorPage, ItemT, PageBody
from .resources import AsyncCheckpoints, AsyncModels, Checkpoints, Models

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")


class Client(BaseClient):
    """A synchronous client.

    ``api_key`` and ``base_url`` default to the ``CKPT_API_KEY`` and ``CKPT_BASE_URL``
    environment variables (``base_url`` then to ``http://127.0.0.1:8000/v1``). Idempotent
    requests are retried up to ``max_retries`` times on connection errors, timeouts, 408, 429
    and 5xx, waiting as ``retry_policy`` says.

    >>> with Client() as client:
    ...     for checkpoint in client.checkpoints.list(model_id):
    ...         print(checkpoint.step, checkpoint.metrics)
    """

    models: Models
    checkpoints: Checkpoints

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
        )
        # A caller's own http_client (a proxy, a test transport) stays the caller's to close.
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()
        self.models = Models(self)
        self.checkpoints = Checkpoints(self)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, request: APIRequest[T]) -> T:
        started = time.monotonic()
        attempt = 0
        while True:
            http_request = self._build_request(self._http, request)
            response: httpx.Response | None = None
            error: APIError
            cause: Exception | None
            try:
                response = self._http.send(http_request)
            except httpx.TimeoutException as exc:
                error, cause = APITimeoutError(request=http_request), exc
            except httpx.TransportError as exc:
                error, cause = APIConnectionError(request=http_request), exc
            else:
                if response.is_success:
                    return request.parse(response)
                error, cause = status_error(response), None
            delay = self._retry_delay(request, attempt, response, started)
            if delay is None:
                raise error from cause
            time.sleep(delay)
            attempt += 1

    def _get_page(self, request: APIRequest[PageBody[ItemT]]) -> CursorPage[ItemT]:
        return CursorPage(
            self._send(request),
            lambda after: self._get_page(request.with_params(after=after)),
        )


class AsyncClient(BaseClient):
    """The asynchronous :class:`Client`: the same resources, with awaitable methods.

    >>> async with AsyncClient() as client:
    ...     async for checkpoint in client.checkpoints.list(model_id):
    ...         print(checkpoint.step, checkpoint.metrics)
    """

    models: AsyncModels
    checkpoints: AsyncCheckpoints

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
        )
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()
        self.models = AsyncModels(self)
        self.checkpoints = AsyncCheckpoints(self)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, request: APIRequest[T]) -> T:
        started = time.monotonic()
        attempt = 0
        while True:
            http_request = self._build_request(self._http, request)
            response: httpx.Response | None = None
            error: APIError
            cause: Exception | None
            try:
                response = await self._http.send(http_request)
            except httpx.TimeoutException as exc:
                error, cause = APITimeoutError(request=http_request), exc
            except httpx.TransportError as exc:
                error, cause = APIConnectionError(request=http_request), exc
            else:
                if response.is_success:
                    return request.parse(response)
                error, cause = status_error(response), None
            delay = self._retry_delay(request, attempt, response, started)
            if delay is None:
                raise error from cause
            await anyio.sleep(delay)
            attempt += 1

    async def _get_page(self, request: APIRequest[PageBody[ItemT]]) -> AsyncCursorPage[ItemT]:
        async def fetch_after(after: str) -> AsyncCursorPage[ItemT]:
            return await self._get_page(request.with_params(after=after))

        return AsyncCursorPage(await self._send(request), fetch_after)
