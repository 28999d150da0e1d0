"""Bearer-key authentication and scope: header -> sha256 -> live key -> the caller's entity, and
whether this request may change anything (a read-only key may not: 403, decided here only)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from ..keys import hash_key
from ..storage.base import Caller, Storage
from .requestlog import note_entity

# Declared for the OpenAPI document (`security: [{"HTTPBearer": []}]`); we read the header ourselves so
# that every failure is a 401 with a message that says what is wrong.
bearer_scheme = HTTPBearer(auto_error=False)

# Requests that change nothing. Every other method writes, whatever the route: a route added later is
# closed to read-only keys until it says otherwise. The POSTs that may only read take the caller
# instead: a batch `download` transfer (`Reader`, with `require_write` for its writing operation)
# and the Hub surface's paths-info (routes/hub.py, whose every other write is refused for any key).
READ_METHODS: Final = frozenset({"GET", "HEAD"})
READ_ONLY_DETAIL: Final = (
    "This API key is read-only: it may list, read and download, but not change anything"
)


class AuthenticationFailed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ReadOnlyKey(Exception):
    """A read-only key asked for a write: 403."""

    detail = READ_ONLY_DETAIL


async def caller_for_authorization(authorization: str | None, storage: Storage) -> Caller:
    """The caller of the key in an `Authorization` header; `AuthenticationFailed` otherwise."""
    if not authorization:
        raise AuthenticationFailed("Not authenticated: send Authorization: Bearer <key>")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationFailed("Invalid authorization header: expected Bearer <key>")
    # Looked up by its sha256: only hashes are stored, and the database compares hashes, so the
    # time a comparison takes says nothing about the key (SQLite also re-checks the row with
    # `hmac.compare_digest`).
    caller = await storage.caller_for_key(hash_key(key.strip()))
    if caller is None:
        raise AuthenticationFailed("Invalid or revoked API key")
    note_entity(caller.entity)
    return caller


def require_write(caller: Caller) -> None:
    """`ReadOnlyKey` unless the caller's key may write."""
    if caller.read_only:
        raise ReadOnlyKey(READ_ONLY_DETAIL)


async def entity_for_authorization(authorization: str | None, storage: Storage, method: str) -> str:
    """The entity a request with this header and method acts for: `AuthenticationFailed` for no
    live key, `ReadOnlyKey` for a write with a read-only key. The fast paths use it too."""
    caller = await caller_for_authorization(authorization, storage)
    if method not in READ_METHODS:
        require_write(caller)
    return caller.entity


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


StorageDep = Annotated[Storage, Depends(get_storage)]


async def authenticate(
    request: Request,
    storage: StorageDep,
    _credentials: Annotated[object, Depends(bearer_scheme)],
) -> str:
    return await entity_for_authorization(
        request.headers.get("authorization"), storage, request.method
    )


async def authenticate_reader(
    request: Request,
    storage: StorageDep,
    _credentials: Annotated[object, Depends(bearer_scheme)],
) -> Caller:
    return await caller_for_authorization(request.headers.get("authorization"), storage)


# The caller's entity, for a request its method allows (every route but the few below).
Entity = Annotated[str, Depends(authenticate)]
# The caller, whatever the method: for a POST that may only read, which then calls `require_write`
# before it writes, and for `GET /v1/preview/key`.
Reader = Annotated[Caller, Depends(authenticate_reader)]
