"""Bearer-key authentication: header -> sha256 -> live key -> the caller's entity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from ..keys import hash_key
from ..storage.base import Storage
from .requestlog import note_entity

# Declared for the OpenAPI document (`security: [{"HTTPBearer": []}]`); we read the header ourselves so
# that every failure is a 401 with a message that says what is wrong.
bearer_scheme = HTTPBearer(auto_error=False)


class AuthenticationFailed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def entity_for_authorization(authorization: str | None, storage: Storage) -> str:
    """The entity of the key in an `Authorization` header; `AuthenticationFailed` otherwise."""
    if not authorization:
        raise AuthenticationFailed("Not authenticated: send Authorization: Bearer <key>")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationFailed("Invalid authorization header: expected Bearer <key>")
    entity = await storage.entity_for_key(hash_key(key.strip()))
    if entity is None:
        raise AuthenticationFailed("Invalid or revoked API key")
    note_entity(entity)
    return entity


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


StorageDep = Annotated[Storage, Depends(get_storage)]


async def authenticate(
    request: Request,
    storage: StorageDep,
    _credentials: Annotated[object, Depends(bearer_scheme)],
) -> str:
    return await entity_for_authorization(request.headers.get("authorization"), storage)


Entity = Annotated[str, Depends(authenticate)]
