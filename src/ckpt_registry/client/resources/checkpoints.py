"""``client.checkpoints``: list, register, read, update, delete and prune a model's checkpoints, and
move their files (the transfers themselves are in ``client/transfers.py``)."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ...contract import (
    DELETED_STEPS_LIMIT_DEFAULT,
    LIST_LIMIT_DEFAULT,
    LIST_ORDER_DEFAULT,
    METRIC_NAMES_LIMIT_DEFAULT,
)
from .._base import APIRequest, path_segment
from ..errors import CkptError
from ..pagination import AsyncPaginator, CursorPage, PageBody
from ..transfers import (
    DEFAULT_PARALLEL,
    ProgressCallback,
    choose_checkpoint,
    download_files,
    list_files,
    register_or_merge,
    run_sync,
    upload_files,
)
from ..types import (
    Checkpoint,
    CheckpointDetail,
    CheckpointsDeleted,
    DeletedStep,
    DownloadResult,
    FileInfo,
    Order,
    RegisteredCheckpoint,
    RetentionResult,
    SavedCheckpoint,
    SortMode,
    UploadResult,
)

if TYPE_CHECKING:
    from .._client import AsyncClient, Client

__all__ = ["AsyncCheckpoints", "Best", "Checkpoints", "KeepBest", "LocalPath"]

#: ``(metric, mode, k)``: keep the ``k`` best checkpoints by ``metric``.
KeepBest = tuple[str, SortMode, int]
#: ``(metric, mode)``: the best checkpoint by ``metric``, its highest (``"max"``) or lowest value.
Best = tuple[str, SortMode]
#: A local file or folder.
LocalPath = str | PathLike[str]

T = TypeVar("T")


# Routes beside `.../checkpoints/{checkpoint_id}`: a checkpoint id can never be one of them.
_SIBLING_ROUTES = frozenset({"best", "deleted-steps", "metrics", "retention", "series", "steps"})


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


def _metric_names(
    model_id: str, *, after: str | None, limit: int
) -> APIRequest[tuple[list[str], bool]]:
    def page(response: httpx.Response) -> tuple[list[str], bool]:
        body: dict[str, Any] = response.json()
        return [str(name) for name in body["data"]], bool(body["has_more"])

    return APIRequest(
        "GET",
        f"{_checkpoints_path(model_id)}/metrics",
        page,
        idempotent=True,
        params={"after": after, "limit": limit},
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

    def metric_names(
        self,
        model_id: str,
        *,
        after: str | None = None,
        page_size: int = METRIC_NAMES_LIMIT_DEFAULT,
    ) -> Iterator[str]:
        """Every metric name the model's live checkpoints have, however old the checkpoints, each
        once, in byte order of their UTF-8 (after ``after``), walking every page."""
        while True:
            data, has_more = self._client._send(
                _metric_names(model_id, after=after, limit=page_size)
            )
            yield from data
            if not (has_more and data):
                return
            after = data[-1]

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

    # Files (weights) ---------------------------------------------------------------------------
    # Each runs the AsyncClient's method on an event loop of its own (client/transfers.py).

    def _transfer(self, call: Callable[[AsyncCheckpoints], Awaitable[T]]) -> T:
        from .._client import AsyncClient

        client = self._client

        async def run() -> T:
            async with AsyncClient(
                api_key=client.api_key,
                base_url=client.base_url,
                timeout=client.timeout,
                max_retries=client.max_retries,
                retry_policy=client.retry_policy,
            ) as twin:
                return await call(twin.checkpoints)

        return run_sync(run)

    def list_files(
        self, model_id: str, *, step: int | None = None, checkpoint_id: str | None = None
    ) -> builtins.list[FileInfo]:
        """Every file of the checkpoint at ``step`` (or ``checkpoint_id``), in path order."""
        return self._transfer(
            lambda c: c.list_files(model_id, step=step, checkpoint_id=checkpoint_id)
        )

    def upload(
        self,
        model_id: str,
        path: LocalPath,
        *,
        step: int | None = None,
        checkpoint_id: str | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload a folder (every file under it, at its path relative to it) or one file (at its
        name) to the checkpoint at ``step`` (or ``checkpoint_id``), ``parallel`` files at a time.

        Files the checkpoint has already, and contents the model's entity holds anywhere, send no
        byte. A dropped connection continues from the bytes the server kept. Other content at a
        path the checkpoint holds raises :class:`FileConflictError` before anything is sent.
        ``progress`` is called with a :class:`TransferProgress` as bytes move.
        """
        return self._transfer(
            lambda c: c.upload(
                model_id,
                path,
                step=step,
                checkpoint_id=checkpoint_id,
                parallel=parallel,
                progress=progress,
            )
        )

    def download(
        self,
        model_id: str,
        dest: LocalPath,
        *,
        step: int | None = None,
        checkpoint_id: str | None = None,
        latest: bool = False,
        best: Best | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download one checkpoint's files into the folder ``dest``, the checkpoint named by
        exactly one of ``step``, ``checkpoint_id``, ``latest=True`` or ``best=(metric, mode)``
        (the mode is required: a loss is best at ``"min"``, an accuracy at ``"max"``).

        Each file is streamed to ``<name>.partial``, checked against its sha256 and only then
        renamed into place: a mismatch raises :class:`FileIntegrityError` and keeps nothing.
        Files already in ``dest`` with the right size and sha256 are not fetched again.
        """
        return self._transfer(
            lambda c: c.download(
                model_id,
                dest,
                step=step,
                checkpoint_id=checkpoint_id,
                latest=latest,
                best=best,
                parallel=parallel,
                progress=progress,
            )
        )

    def save(
        self,
        model_id: str,
        *,
        step: int,
        path: LocalPath,
        metrics: Mapping[str, float] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: ProgressCallback | None = None,
    ) -> SavedCheckpoint:
        """Save a folder (or a file) as the checkpoint at ``step``, with ``metrics``: the one call
        a training loop needs. The step is registered when missing; when it is registered
        already, the metrics it lacks are added (another value for a metric it holds raises
        :class:`CkptError`). Then the folder is uploaded, as :meth:`upload` does."""
        return self._transfer(
            lambda c: c.save(
                model_id,
                step=step,
                path=path,
                metrics=metrics,
                parallel=parallel,
                progress=progress,
            )
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

    async def metric_names(
        self,
        model_id: str,
        *,
        after: str | None = None,
        page_size: int = METRIC_NAMES_LIMIT_DEFAULT,
    ) -> AsyncIterator[str]:
        """As :meth:`Checkpoints.metric_names`."""
        while True:
            data, has_more = await self._client._send(
                _metric_names(model_id, after=after, limit=page_size)
            )
            for name in data:
                yield name
            if not (has_more and data):
                return
            after = data[-1]

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

    # Files (weights): as on Checkpoints --------------------------------------------------------

    async def _checkpoint_id(
        self, model_id: str, step: int | None, checkpoint_id: str | None
    ) -> str:
        if (step is None) == (checkpoint_id is None):
            raise ValueError("Name the checkpoint by step= or checkpoint_id= (one of them)")
        if checkpoint_id is not None:
            return checkpoint_id
        assert step is not None
        return (await self.at_step(model_id, step)).id

    async def list_files(
        self, model_id: str, *, step: int | None = None, checkpoint_id: str | None = None
    ) -> builtins.list[FileInfo]:
        found = await self._checkpoint_id(model_id, step, checkpoint_id)
        return await list_files(self._client, model_id, found)

    async def upload(
        self,
        model_id: str,
        path: LocalPath,
        *,
        step: int | None = None,
        checkpoint_id: str | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        found = await self._checkpoint_id(model_id, step, checkpoint_id)
        return await upload_files(
            self._client, model_id, found, Path(path), parallel=parallel, progress=progress
        )

    async def download(
        self,
        model_id: str,
        dest: LocalPath,
        *,
        step: int | None = None,
        checkpoint_id: str | None = None,
        latest: bool = False,
        best: Best | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        checkpoint = await choose_checkpoint(
            self._client,
            model_id,
            step=step,
            checkpoint_id=checkpoint_id,
            latest=latest,
            best=best,
        )
        result = DownloadResult(checkpoint=checkpoint, dest=Path(dest))
        return await download_files(
            self._client,
            model_id,
            checkpoint.id,
            Path(dest),
            result,
            parallel=parallel,
            progress=progress,
        )

    async def save(
        self,
        model_id: str,
        *,
        step: int,
        path: LocalPath,
        metrics: Mapping[str, float] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: ProgressCallback | None = None,
    ) -> SavedCheckpoint:
        if not Path(path).exists():  # before registering a step that would have no files
            raise CkptError(f"{path}: no such file or folder")
        checkpoint, outcome = await register_or_merge(
            self._client, model_id, step, dict(metrics or {})
        )
        uploaded = await upload_files(
            self._client, model_id, checkpoint.id, Path(path), parallel=parallel, progress=progress
        )
        return SavedCheckpoint(
            checkpoint=await self.get(model_id, checkpoint.id), outcome=outcome, upload=uploaded
        )
