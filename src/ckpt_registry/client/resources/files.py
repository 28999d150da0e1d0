"""``client.files``: a checkpoint's weights. Save a folder as a checkpoint, download one to a folder.

The transfers themselves are in ``client/transfers.py``, written once for ``AsyncClient``; ``Files``
runs them on a private event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import CkptError, ConflictError
from ..transfers import (
    DEFAULT_PARALLEL,
    DownloadResult,
    FileInfo,
    Progress,
    UploadResult,
    download_files,
    list_files,
    run_sync,
    upload_files,
)
from ..types import CheckpointDetail, SortMode

if TYPE_CHECKING:
    from .._client import AsyncClient, Client

__all__ = ["AsyncFiles", "DownloadedCheckpoint", "Files", "SavedCheckpoint"]

T = TypeVar("T")
Where = str | PathLike[str]


@dataclass(frozen=True, slots=True)
class SavedCheckpoint:
    """A checkpoint saved from a folder: the checkpoint (with its files counted) and what moved."""

    checkpoint: CheckpointDetail
    upload: UploadResult


@dataclass(frozen=True, slots=True)
class DownloadedCheckpoint:
    """The checkpoint a download chose (by step, id, latest or best) and what moved."""

    checkpoint: CheckpointDetail
    download: DownloadResult


class AsyncFiles:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, model_id: str, checkpoint_id: str) -> list[FileInfo]:
        """Every file of the checkpoint, in path order."""
        return await list_files(self._client, model_id, checkpoint_id)

    async def upload(
        self,
        model_id: str,
        checkpoint_id: str,
        source: Where,
        *,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> UploadResult:
        """Upload a folder (every file under it, paths relative to it) or one file to the
        checkpoint. Files the checkpoint has already, or whose content the entity holds, send no
        byte; a dropped connection resumes. Other content at a taken path raises
        :class:`FileConflictError` before anything is sent."""
        return await upload_files(
            self._client,
            model_id,
            checkpoint_id,
            Path(source),
            parallel=parallel,
            progress=progress,
        )

    async def download(
        self,
        model_id: str,
        checkpoint_id: str,
        dest: Where,
        *,
        paths: Sequence[str] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> DownloadResult:
        """Download the checkpoint's files (or ``paths`` of them) under ``dest``. Each is checked
        against its sha256 and renamed into place only then; files already there with the right
        sha256 are skipped, and a ``.partial`` left by an interrupted run is continued."""
        return await download_files(
            self._client,
            model_id,
            checkpoint_id,
            Path(dest),
            paths=paths,
            parallel=parallel,
            progress=progress,
        )

    async def save(
        self,
        model_id: str,
        *,
        step: int,
        folder: Where,
        metrics: Mapping[str, float] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> SavedCheckpoint:
        """Save ``folder`` as the checkpoint at ``step``: register the step with ``metrics`` (when
        it is registered already, ``metrics`` are merged into its own), then upload the folder."""
        checkpoints = self._client.checkpoints
        try:
            checkpoint_id = (await checkpoints.register(model_id, step=step, metrics=metrics)).id
        except ConflictError:
            found = await checkpoints.at_step(model_id, step)
            checkpoint_id = found.id
            await checkpoints.update_metrics(model_id, checkpoint_id, dict(metrics or {}))
        uploaded = await self.upload(
            model_id, checkpoint_id, folder, parallel=parallel, progress=progress
        )
        return SavedCheckpoint(await checkpoints.get(model_id, checkpoint_id), uploaded)

    async def download_checkpoint(
        self,
        model_id: str,
        dest: Where,
        *,
        step: int | None = None,
        checkpoint_id: str | None = None,
        latest: bool = False,
        best: tuple[str, SortMode] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> DownloadedCheckpoint:
        """Download one checkpoint's files, chosen by exactly one of ``step``, ``checkpoint_id``,
        ``latest=True`` or ``best=(metric, "max" | "min")`` (the mode is required: a loss is best
        at its minimum, a reward at its maximum)."""
        checkpoint = await self._choose(model_id, step, checkpoint_id, latest, best)
        result = await self.download(
            model_id, checkpoint.id, dest, parallel=parallel, progress=progress
        )
        return DownloadedCheckpoint(checkpoint, result)

    async def _choose(
        self,
        model_id: str,
        step: int | None,
        checkpoint_id: str | None,
        latest: bool,
        best: tuple[str, SortMode] | None,
    ) -> CheckpointDetail:
        chosen = [step is not None, checkpoint_id is not None, latest, best is not None]
        if sum(chosen) != 1:
            raise ValueError("choose the checkpoint by one of step, checkpoint_id, latest or best")
        checkpoints = self._client.checkpoints
        if step is not None:
            return await checkpoints.at_step(model_id, step)
        if checkpoint_id is not None:
            return await checkpoints.get(model_id, checkpoint_id)
        if best is not None:
            metric, mode = best
            return await checkpoints.best(model_id, metric=metric, mode=mode)
        newest = await checkpoints.latest(model_id)
        if newest is None:
            raise CkptError(f"model {model_id} has no checkpoints")
        return await checkpoints.get(model_id, newest.id)


class Files:
    """The synchronous :class:`AsyncFiles`: the same transfers, run on an event loop of their own
    (with a connection pool of their own, built from this client's key, URL, timeout and
    retries)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _run(self, call: Callable[[AsyncFiles], Awaitable[T]]) -> T:
        from .._client import AsyncClient

        sync = self._client

        async def go() -> T:
            async with AsyncClient(
                api_key=sync.api_key,
                base_url=sync.base_url,
                timeout=sync.timeout,
                max_retries=sync.max_retries,
                retry_policy=sync.retry_policy,
            ) as client:
                return await call(client.files)

        result: T = run_sync(go)
        return result

    def list(self, model_id: str, checkpoint_id: str) -> list[FileInfo]:
        """Every file of the checkpoint, in path order."""
        return self._run(lambda files: files.list(model_id, checkpoint_id))

    def upload(
        self,
        model_id: str,
        checkpoint_id: str,
        source: Where,
        *,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> UploadResult:
        """See :meth:`AsyncFiles.upload`."""
        return self._run(
            lambda files: files.upload(
                model_id, checkpoint_id, source, parallel=parallel, progress=progress
            )
        )

    def download(
        self,
        model_id: str,
        checkpoint_id: str,
        dest: Where,
        *,
        paths: Sequence[str] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> DownloadResult:
        """See :meth:`AsyncFiles.download`."""
        return self._run(
            lambda files: files.download(
                model_id, checkpoint_id, dest, paths=paths, parallel=parallel, progress=progress
            )
        )

    def save(
        self,
        model_id: str,
        *,
        step: int,
        folder: Where,
        metrics: Mapping[str, float] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> SavedCheckpoint:
        """See :meth:`AsyncFiles.save`."""
        return self._run(
            lambda files: files.save(
                model_id,
                step=step,
                folder=folder,
                metrics=metrics,
                parallel=parallel,
                progress=progress,
            )
        )

    def download_checkpoint(
        self,
        model_id: str,
        dest: Where,
        *,
        step: int | None = None,
        checkpoint_id: str | None = None,
        latest: bool = False,
        best: tuple[str, SortMode] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        progress: Progress | None = None,
    ) -> DownloadedCheckpoint:
        """See :meth:`AsyncFiles.download_checkpoint`."""
        return self._run(
            lambda files: files.download_checkpoint(
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
