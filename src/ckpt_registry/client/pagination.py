"""Cursor pages that iterate across every page, the way openai-python's ``CursorPage`` does.

The next request sends ``after = data[-1].id`` with the first request's ``limit`` and ``order``;
the walk stops on ``has_more: false`` or an empty ``data``. Iterating holds one page at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["AsyncCursorPage", "AsyncPaginator", "CursorPage", "PageBody"]


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


ItemT = TypeVar("ItemT", bound=_Identified)


@dataclass(frozen=True, slots=True)
class PageBody(Generic[ItemT]):
    """One parsed list envelope: ``{object: "list", data, first_id, last_id, has_more}``."""

    data: list[ItemT]
    has_more: bool
    first_id: str
    last_id: str

    @classmethod
    def from_json(
        cls, body: dict[str, Any], parse_item: Callable[[dict[str, Any]], ItemT]
    ) -> PageBody[ItemT]:
        return cls(
            data=[parse_item(item) for item in body["data"]],
            has_more=bool(body["has_more"]),
            first_id=body.get("first_id", ""),
            last_id=body.get("last_id", ""),
        )


class _BasePage(Generic[ItemT]):
    def __init__(self, body: PageBody[ItemT]) -> None:
        self.data = body.data
        self.has_more = body.has_more
        self.first_id = body.first_id
        self.last_id = body.last_id

    def has_next_page(self) -> bool:
        # An empty page ends the walk even if a server wrongly claims more.
        return self.has_more and bool(self.data)

    def _next_cursor(self) -> str:
        if not self.has_next_page():
            raise RuntimeError("No next page: check has_next_page() before get_next_page()")
        return self.data[-1].id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data=<{len(self.data)} items>, has_more={self.has_more})"


class CursorPage(_BasePage[ItemT]):
    """A page of a list; iterating it yields the items of this page and every page after it."""

    def __init__(self, body: PageBody[ItemT], fetch_after: Callable[[str], CursorPage[ItemT]]):
        super().__init__(body)
        self._fetch_after = fetch_after

    def get_next_page(self) -> CursorPage[ItemT]:
        return self._fetch_after(self._next_cursor())

    def iter_pages(self) -> Iterator[CursorPage[ItemT]]:
        page = self
        yield page
        while page.has_next_page():
            page = page.get_next_page()
            yield page

    def __iter__(self) -> Iterator[ItemT]:
        for page in self.iter_pages():
            yield from page.data


class AsyncCursorPage(_BasePage[ItemT]):
    """The async :class:`CursorPage`: ``async for`` yields the items of every page."""

    def __init__(
        self,
        body: PageBody[ItemT],
        fetch_after: Callable[[str], Awaitable[AsyncCursorPage[ItemT]]],
    ) -> None:
        super().__init__(body)
        self._fetch_after = fetch_after

    async def get_next_page(self) -> AsyncCursorPage[ItemT]:
        return await self._fetch_after(self._next_cursor())

    async def iter_pages(self) -> AsyncIterator[AsyncCursorPage[ItemT]]:
        page = self
        yield page
        while page.has_next_page():
            page = await page.get_next_page()
            yield page

    async def __aiter__(self) -> AsyncIterator[ItemT]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item


class AsyncPaginator(Generic[ItemT]):
    """What async ``list()`` returns: ``await`` it for the first page, or ``async for`` over
    every item without awaiting first (as in openai-python)."""

    def __init__(self, first_page: Callable[[], Awaitable[AsyncCursorPage[ItemT]]]) -> None:
        self._first_page = first_page

    def __await__(self) -> Generator[Any, None, AsyncCursorPage[ItemT]]:
        return self._first_page().__await__()

    async def __aiter__(self) -> AsyncIterator[ItemT]:
        page = await self
        async for item in page:
            yield item
