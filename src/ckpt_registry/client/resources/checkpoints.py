"""``client.checkpoints``: list, register, read, update, delete and prune a model's checkpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ...contract import DELETED_STEPS_LIMIT_DEFAULT, LIST_LIMIT_DEFAULT, LIST_ORDER_DEFAULT
from .._base import APIRequest, path_segment
from ..pagination import AsyncPaginator, CursorPage, PageBody
from ..types import (
    Checkpoint,
    CheckpointDetail,
    CheckpointsDeleted,
    DeletedStep,
    Order,
    RegisteredCheckpoint,
    RetentionResult,
    SortMode,
)

if TYPE_CHECKING:
    from .._client import AsyncClient, Client

__all__ = ["AsyncCheckpoints", "Checkpoints", "KeepBest"]

#: ``(metric, mode, k)``: keep the ``k`` best checkpoints by ``metric``.
KeepBest = tuple[str, SortMode, int]


# Routes beside `.../checkpoints/{checkpoint_id}`: a checkpoint id can never be one of them.
_SIBLING_ROUTES = frozenset({"best", "deleted-steps", "retention", "steps"})


def _checkpoints_path(model_id: str) -> str:
    return f"preview/models/{path_segment(model_id, what='model id')}/checkpoints"


def _checkpoint_path(model_id: str, checkpoint_id: str) -> str:
    segment = path_segment(checkpoint_id, what="checkpoint id", reserved=_SIBLING_ROUTES)
    return f"{_checkpoints_path(model_id)}/{segment}"


def _list(
    model_id: str, *, order: Order, limit: int, after: str | None
) -> APIRequest[PageBody[Checkpoint]]:
    return APIRequest(
        "GET",
        _checkpoints_path(model_id),
        lambda r: PageBody.from_json(r.json(), Checkpoint.from_json),
        idempotent=True,
        params={"order": order, "limit": limit, "after": after},
    )


def _latest(model_id: str) -> APIRequest[Checkpoint | None]:
    def first(response: httpx.Response) -> Checkpoint | None:
        data = response.json()["data"]
        return Checkpoint.from_json(data[0]) if data else None

    return APIRequest(
        "GET",
        _checkpoints_path(model_id),
        first,
        idempotent=True,
        params={"order": "desc", "limit": 1},
    )


def _register(
    model_id: str, *, step: int, metrics: Mapping[str, float] | None
) -> APIRequest[RegisteredCheckpoint]:
    def registered(response: httpx.Response) -> RegisteredCheckpoint:
        detail = CheckpointDetail.from_json(response.json())
        return RegisteredCheckpoint(
            id=detail.id,
            step=detail.step,
            metrics=detail.metrics,
            created_at=detail.created_at,
            updated_at=detail.updated_at,
            files=detail.files,
            size_bytes=detail.size_bytes,
            created=response.status_code == 201,
        )

    # Registering the same step with the same metrics again answers 200 with the existing
    # checkpoint, so a retry after a lost response is harmless.
    return APIRequest(
        "POST",
        _checkpoints_path(model_id),
        registered,
        idempotent=True,
        json={"step": step, "metrics": dict(metrics or {})},
    )


def _get(model_id: str, checkpoint_id: str) -> APIRequest[CheckpointDetail]:
    return APIRequest(
        "GET",
        _checkpoint_path(model_id, checkpoint_id),
        lambda r: CheckpointDetail.from_json(r.json()),
        idempotent=True,
    )


def _at_step(model_id: str, step: int) -> APIRequest[CheckpointDetail]:
    return APIRequest(
        "GET",
        f"{_checkpoints_path(model_id)}/steps/{step}",
        lambda r: CheckpointDetail.from_json(r.json()),
        idempotent=True,
    )


def _update_metrics(
    model_id: str, checkpoint_id: str, metrics: Mapping[str, float]
) -> APIRequest[CheckpointDetail]:
    # Not retried: a merge that raced with another update must not be replayed over it.
    return APIRequest(
        "PATCH",
        _checkpoint_path(model_id, checkpoint_id),
        lambda r: CheckpointDetail.from_json(r.json()),
        idempotent=False,
        json={"metrics": dict(metrics)},
    )


def _delete(model_id: str, steps: Iterable[int]) -> APIRequest[CheckpointsDeleted]:
    return APIRequest(
        "DELETE",
        _checkpoints_path(model_id),
        lambda r: CheckpointsDeleted.from_json(r.json()),
        idempotent=True,
        json={"steps": list(steps)},
    )


def _deleted_steps(
    model_id: str, *, after_step: int | None, limit: int
) -> APIRequest[tuple[list[DeletedStep], bool]]:
    def page(response: httpx.Response) -> tuple[list[DeletedStep], bool]:
        body: dict[str, Any] = response.json()
        return [DeletedStep.from_json(item) for item in body["data"]], bool(body["has_more"])

    return APIRequest(
        "GET",
        f"{_checkpoints_path(model_id)}/deleted-steps",
        page,
        idempotent=True,
        params={"after_step": after_step, "limit": limit},
    )


def _best(model_id: str, *, metric: str, mode: SortMode) -> APIRequest[CheckpointDetail]:
    return APIRequest(
        "GET",
        f"{_checkpoints_path(model_id)}/best",
        lambda r: CheckpointDetail.from_json(r.json()),
        idempotent=True,
        params={"metric": metric, "mode": mode},
    )


def _retention(
    model_id: str, *, keep_latest: int, keep_best: KeepBest | None, dry_run: bool
) -> APIRequest[RetentionResult]:
    best = None
    if keep_best is not None:
        metric, mode, k = keep_best
        best = {"metric": metric, "mode": mode, "k": k}
    # A real run deletes; replaying it after new checkpoints arrived could delete more than the
    # caller saw, so only a dry run is retried.
    return APIRequest(
        "POST",
        f"{_checkpoints_path(model_id)}/retention",
        lambda r: RetentionResult.from_json(r.json()),
        idempotent=dry_run,
        json={"keep_latest": keep_latest, "keep_best": best, "dry_run": dry_run},
    )


class Checkpoints:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(
        self,
        model_id: str,
        *,
        order: Order = LIST_ORDER_DEFAULT,
        limit: int = LIST_LIMIT_DEFAULT,
        after: str | None = None,
    ) -> CursorPage[Checkpoint]:
        """A page of checkpoints by step (the one after checkpoint ``after``, if given);
        iterating it walks every page after it too."""
        return self._client._page(_list(model_id, order=order, limit=limit, after=after))

    def register(
        self, model_id: str, *, step: int, metrics: Mapping[str, float] | None = None
    ) -> RegisteredCheckpoint:
        """Register ``step``; registering it again with the same metrics returns the existing
        checkpoint (``created`` false), with other metrics raises :class:`ConflictError`."""
        return self._client._send(_register(model_id, step=step, metrics=metrics))

    def get(self, model_id: str, checkpoint_id: str) -> CheckpointDetail:
        return self._client._send(_get(model_id, checkpoint_id))

    def at_step(self, model_id: str, step: int) -> CheckpointDetail:
        """The checkpoint at ``step``; raises :class:`NotFoundError` when there is none."""
        return self._client._send(_at_step(model_id, step))

    def update_metrics(
        self, model_id: str, checkpoint_id: str, metrics: Mapping[str, float]
    ) -> CheckpointDetail:
        """Merge ``metrics`` into the checkpoint's: new names are added, existing ones replaced."""
        return self._client._send(_update_metrics(model_id, checkpoint_id, metrics))

    def delete(self, model_id: str, *, steps: Iterable[int]) -> CheckpointsDeleted:
        """Delete the checkpoints at ``steps``; steps with none are reported, not an error."""
        return self._client._send(_delete(model_id, steps))

    def latest(self, model_id: str) -> Checkpoint | None:
        """The checkpoint with the highest step, or None when the model has none."""
        return self._client._send(_latest(model_id))

    def deleted_steps(
        self,
        model_id: str,
        *,
        after_step: int | None = None,
        page_size: int = DELETED_STEPS_LIMIT_DEFAULT,
    ) -> Iterator[DeletedStep]:
        """Every step above ``after_step`` whose checkpoint was deleted (by a person or
        retention) and that has no live checkpoint now, ascending, walking every page. Known as
        long as the server keeps the tombstones (24 hours by default)."""
        while True:
            data, has_more = self._client._send(
                _deleted_steps(model_id, after_step=after_step, limit=page_size)
            )
            yield from data
            if not (has_more and data):
                return
            after_step = data[-1].step

    def best(self, model_id: str, *, metric: str, mode: SortMode = "max") -> CheckpointDetail:
        """The checkpoint with the highest ``metric`` (``mode="max"``, the default, as the
        API's) or the lowest (``mode="min"``). The default suits a reward or an accuracy; for a
        loss pass ``mode="min"``, or this returns the checkpoint with the *highest* loss. Ties go
        to the later step. Raises :class:`NotFoundError` when no checkpoint has the metric."""
        return self._client._send(_best(model_id, metric=metric, mode=mode))

    def retention(
        self,
        model_id: str,
        *,
        keep_latest: int,
        keep_best: KeepBest | None = None,
        dry_run: bool = False,
    ) -> RetentionResult:
        """Keep the latest ``keep_latest`` checkpoints and the ``k`` best by a metric, delete the
        rest (or only report what would go, with ``dry_run``). The latest is never deleted."""
        return self._client._send(
            _retention(model_id, keep_latest=keep_latest, keep_best=keep_best, dry_run=dry_run)
        )


class AsyncCheckpoints:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def list(
        self,
        model_id: str,
        *,
        order: Order = LIST_ORDER_DEFAULT,
        limit: int = LIST_LIMIT_DEFAULT,
        after: str | None = None,
    ) -> AsyncPaginator[Checkpoint]:
        return self._client._page(_list(model_id, order=order, limit=limit, after=after))

    async def register(
        self, model_id: str, *, step: int, metrics: Mapping[str, float] | None = None
    ) -> RegisteredCheckpoint:
        return await self._client._send(_register(model_id, step=step, metrics=metrics))

    async def get(self, model_id: str, checkpoint_id: str) -> CheckpointDetail:
        return await self._client._send(_get(model_id, checkpoint_id))

    async def at_step(self, model_id: str, step: int) -> CheckpointDetail:
        return await self._client._send(_at_step(model_id, step))

    async def update_metrics(
        self, model_id: str, checkpoint_id: str, metrics: Mapping[str, float]
    ) -> CheckpointDetail:
        return await self._client._send(_update_metrics(model_id, checkpoint_id, metrics))

    async def delete(self, model_id: str, *, steps: Iterable[int]) -> CheckpointsDeleted:
        return await self._client._send(_delete(model_id, steps))

    async def latest(self, model_id: str) -> Checkpoint | None:
        return await self._client._send(_latest(model_id))

    async def deleted_steps(
        self,
        model_id: str,
        *,
        after_step: int | None = None,
        page_size: int = DELETED_STEPS_LIMIT_DEFAULT,
    ) -> AsyncIterator[DeletedStep]:
        """As :meth:`Checkpoints.deleted_steps`."""
        while True:
            data, has_more = await self._client._send(
                _deleted_steps(model_id, after_step=after_step, limit=page_size)
            )
            for item in data:
                yield item
            if not (has_more and data):
                return
            after_step = data[-1].step

    async def best(self, model_id: str, *, metric: str, mode: SortMode = "max") -> CheckpointDetail:
        """As :meth:`Checkpoints.best`: ``mode`` defaults to ``"max"``; pass ``"min"`` for a loss."""
        return await self._client._send(_best(model_id, metric=metric, mode=mode))

    async def retention(
        self,
        model_id: str,
        *,
        keep_latest: int,
        keep_best: KeepBest | None = None,
        dry_run: bool = False,
    ) -> RetentionResult:
        return await self._client._send(
            _retention(model_id, keep_latest=keep_latest, keep_best=keep_best, dry_run=dry_run)
        )
