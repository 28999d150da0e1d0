"""``Client`` and ``AsyncClient``: the two ways to talk to a registry."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TypeVar

import anyio
import httpx

from ._base import DEFAULT_MAX_RETRIES, APIRequest, Attempts, BaseClient, Retry, RetryPolicy
from .pagination import AsyncCursorPage, AsyncPaginator, CursorPage, ItemT, PageBody
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
        return Attempts(self, request).run(
            self._http,
            lambda http_request: self._http.send(http_request, stream=request.stream),
            time.sleep,
        )

    def _page(self, request: APIRequest[PageBody[ItemT]]) -> CursorPage[ItemT]:
        return CursorPage(
            self._send(request),
            lambda after: self._page(request.with_params(after=after)),
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
        attempts = Attempts(self, request)
        while True:
            http_request = attempts.next_request(self._http)
            try:
                response = await self._http.send(http_request, stream=request.stream)
                if not response.is_success:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
            except httpx.TransportError as exc:
                outcome: T | Retry = attempts.failed(http_request, exc)
            else:
                try:
                    outcome = attempts.answered(response)
                except BaseException:
                    await response.aclose()
                    raise
            if not isinstance(outcome, Retry):
                return outcome
            await anyio.sleep(outcome.delay)

    def _page(self, request: APIRequest[PageBody[ItemT]]) -> AsyncPaginator[ItemT]:
        """The pages of a list, fetched when awaited or iterated."""

        async def fetch(request: APIRequest[PageBody[ItemT]]) -> AsyncCursorPage[ItemT]:
            return AsyncCursorPage(
                await self._send(request),
                lambda after: fetch(request.with_params(after=after)),
            )

        return AsyncPaginator(lambda: fetch(request))
