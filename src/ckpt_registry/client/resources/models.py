"""``client.models``: create, list, get and delete models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...contract import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, LIST_ORDER_DEFAULT
from .._base import APIRequest, path_segment
from ..pagination import AsyncPaginator, CursorPage, PageBody
from ..types import Model, ModelDeleted, Order

if TYPE_CHECKING:
    from .._client import AsyncClient, Client

__all__ = ["AsyncModels", "Models"]


def _create(
    *, project: str, name: str, base_model: str, entity: str | None, return_existing: bool
) -> APIRequest[Model]:
    body = {
        "entity": entity,
        "project": project,
        "name": name,
        "base_model": base_model,
        "return_existing": return_existing,
    }
    # Sending a create twice makes a second attempt fail with 409, unless the server is told
    # to hand back the existing model; only then is it safe to retry.
    return APIRequest(
        "POST",
        "preview/models",
        lambda r: Model.from_json(r.json()),
        idempotent=return_existing,
        json=body,
    )


def _list(
    *, project: str | None, order: Order, limit: int, after: str | None
) -> APIRequest[PageBody[Model]]:
    return APIRequest(
        "GET",
        "preview/models",
        lambda r: PageBody.from_json(r.json(), Model.from_json),
        idempotent=True,
        params={"project": project, "order": order, "limit": limit, "after": after},
    )


def _get(model_id: str) -> APIRequest[Model]:
    return APIRequest(
        "GET",
        f"preview/models/{path_segment(model_id, what='model id')}",
        lambda r: Model.from_json(r.json()),
        idempotent=True,
    )


def _delete(model_id: str) -> APIRequest[ModelDeleted]:
    return APIRequest(
        "DELETE",
        f"preview/models/{path_segment(model_id, what='model id')}",
        lambda r: ModelDeleted.from_json(r.json()),
        idempotent=True,
    )


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        *,
        project: str,
        name: str,
        base_model: str,
        entity: str | None = None,
        return_existing: bool = False,
    ) -> Model:
        """Create a model; with ``return_existing`` an existing live model of that name is
        returned unchanged instead of raising :class:`ConflictError`."""
        return self._client._send(
            _create(
                project=project,
                name=name,
                base_model=base_model,
                entity=entity,
                return_existing=return_existing,
            )
        )

    def list(
        self,
        *,
        project: str | None = None,
        order: Order = LIST_ORDER_DEFAULT,
        limit: int = LIST_LIMIT_DEFAULT,
        after: str | None = None,
    ) -> CursorPage[Model]:
        """The key's entity's models by creation time; iterate the page to walk all of them."""
        return self._client._page(_list(project=project, order=order, limit=limit, after=after))

    def get(self, model_id: str) -> Model:
        return self._client._send(_get(model_id))

    def find(self, *, project: str, name: str) -> Model | None:
        """The key's entity's live model named ``name`` in ``project``, or None (names are
        unique among a project's live models)."""
        for model in self.list(project=project, limit=LIST_LIMIT_MAX):
            if model.name == name:
                return model
        return None

    def delete(self, model_id: str) -> ModelDeleted:
        """Delete a model and all its checkpoints."""
        return self._client._send(_delete(model_id))


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        project: str,
        name: str,
        base_model: str,
        entity: str | None = None,
        return_existing: bool = False,
    ) -> Model:
        return await self._client._send(
            _create(
                project=project,
                name=name,
                base_model=base_model,
                entity=entity,
                return_existing=return_existing,
            )
        )

    def list(
        self,
        *,
        project: str | None = None,
        order: Order = LIST_ORDER_DEFAULT,
        limit: int = LIST_LIMIT_DEFAULT,
        after: str | None = None,
    ) -> AsyncPaginator[Model]:
        return self._client._page(_list(project=project, order=order, limit=limit, after=after))

    async def get(self, model_id: str) -> Model:
        return await self._client._send(_get(model_id))

    async def find(self, *, project: str, name: str) -> Model | None:
        """As :meth:`Models.find`."""
        async for model in self.list(project=project, limit=LIST_LIMIT_MAX):
            if model.name == name:
                return model
        return None

    async def delete(self, model_id: str) -> ModelDeleted:
        return await self._client._send(_delete(model_id))
