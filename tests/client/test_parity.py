"""``Client`` and ``AsyncClient`` offer the same API: every resource, every public method, with the
same parameters, defaults and annotations. Derived by introspection, so a method added to one
client and forgotten on the other fails here.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, get_args, get_origin, get_type_hints

import httpx
import pytest

from ckpt_registry.client import AsyncClient, AsyncPaginator, Client, CursorPage

# What an awaitable method's sync twin returns, when the async one is not a coroutine: a list
# returns a paginator to await or iterate, not a coroutine; a walk an async iterator.
ASYNC_RETURN = {CursorPage: AsyncPaginator, Iterator: AsyncIterator}


def resources(client: type) -> dict[str, type]:
    return {name: cls for name, cls in get_type_hints(client).items() if not name.startswith("_")}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: function
        for name, function in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any, Any]]:
    """(name, kind, default, annotation) of each parameter but ``self``."""
    hints = get_type_hints(function)
    return [
        (p.name, p.kind, p.default, hints.get(p.name))
        for p in inspect.signature(function).parameters.values()
        if p.name != "self"
    ]


def test_both_clients_have_the_same_resources() -> None:
    sync, async_ = resources(Client), resources(AsyncClient)

    assert sync.keys() == async_.keys()
    assert set(sync) >= {"models", "checkpoints"}


@pytest.mark.parametrize("resource", sorted(resources(Client)))
def test_every_resource_method_has_an_async_twin(resource: str) -> None:
    sync_methods = public_methods(resources(Client)[resource])
    async_methods = public_methods(resources(AsyncClient)[resource])

    assert sync_methods.keys() == async_methods.keys()
    for name, sync in sync_methods.items():
        async_ = async_methods[name]
        assert parameters(async_) == parameters(sync), name
        assert not inspect.iscoroutinefunction(sync), name
        sync_return = get_type_hints(sync)["return"]
        async_return = get_type_hints(async_)["return"]
        if inspect.iscoroutinefunction(async_):
            assert async_return == sync_return, name
        else:
            assert get_origin(async_return) is ASYNC_RETURN[get_origin(sync_return)], name
            assert get_args(async_return) == get_args(sync_return), name


def test_both_clients_take_the_same_arguments() -> None:
    sync = parameters(Client.__init__)
    async_ = parameters(AsyncClient.__init__)

    # Each takes its own kind of httpx client; everything else is the same.
    own_http = {httpx.Client | None: httpx.AsyncClient | None}
    assert [(*p[:3], own_http.get(p[3], p[3])) for p in sync] == async_
    assert [p[0] for p in sync] == [
        "api_key",
        "base_url",
        "timeout",
        "max_retries",
        "retry_policy",
        "http_client",
    ]


@pytest.mark.anyio
async def test_both_clients_close_and_are_context_managers() -> None:
    assert public_methods(Client).keys() == public_methods(AsyncClient).keys() == {"close"}
    assert inspect.iscoroutinefunction(AsyncClient.close)

    with Client(api_key="k") as sync:
        pass
    async with AsyncClient(api_key="k") as async_:
        pass

    assert sync._http.is_closed
    assert async_._http.is_closed


@pytest.mark.anyio
async def test_neither_client_closes_an_http_client_it_was_given() -> None:
    with httpx.Client() as http:
        with Client(api_key="k", http_client=http):
            pass
        assert not http.is_closed
    async with httpx.AsyncClient() as async_http:
        async with AsyncClient(api_key="k", http_client=async_http):
            pass
        assert not async_http.is_closed
