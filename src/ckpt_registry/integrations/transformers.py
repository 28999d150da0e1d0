"""A Hugging Face ``transformers.Trainer`` callback that saves every checkpoint to the registry.

Needs the ``[transformers]`` extra (``pip install "ckpt-registry[transformers]"``)::

    from ckpt_registry.integrations.transformers import CkptRegistryCallback

    callback = CkptRegistryCallback(project="gpt2-tiny", name="run-3")
    trainer = Trainer(..., callbacks=[callback])
    trainer.train()  # returns once the last checkpoint is uploaded
    callback.failures  # what could not be sent, if anything

All network work runs on one worker thread in the order it happened, so training only waits when
more than ``max_pending`` checkpoints are still queued, and at the end of ``train()``.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..client import CkptError, Client, NotFoundError
from ..client.resources.checkpoints import KeepBest
from .hf_trainer import MetricConflict, metrics_from_history, register_or_merge, training_metrics

__all__ = ["CkptRegistryCallback", "SendFailure"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendFailure:
    """Something the callback could not send: ``what`` is ``register``, ``upload``,
    ``metrics`` or ``retention``; ``error`` is the exception it met."""

    step: int
    what: str
    error: BaseException


class CkptRegistryCallback(TrainerCallback):
    """Register each saved step with the metrics logged at it, upload its ``checkpoint-N``
    folder in the background, send evaluation results that arrive later as a metrics update, and
    optionally apply retention after each upload.

    The model is ``model_id``, or the model named ``project``/``name`` (created when missing,
    with ``base_model``, by default the Trainer model's ``config._name_or_path``).

    Steps already registered (a resumed run) are merged, never duplicated; a real conflict (the
    step holds another value for a metric) is a failure. Failures are logged and kept in
    :attr:`failures`; none of them stops training.
    """

    def __init__(
        self,
        *,
        client: Client | None = None,
        model_id: str | None = None,
        project: str | None = None,
        name: str | None = None,
        base_model: str | None = None,
        entity: str | None = None,
        upload_files: bool = True,
        include_timing_metrics: bool = False,
        keep_latest: int | None = None,
        keep_best: KeepBest | None = None,
        max_pending: int = 2,
    ) -> None:
        if (model_id is None) == (project is None or name is None):
            raise ValueError("Give model_id, or project and name (not both)")
        if keep_best is not None and keep_latest is None:
            raise ValueError("keep_best needs keep_latest (the retention policy keeps both)")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._client = client if client is not None else Client()
        self._model_id = model_id
        self._project = project
        self._name = name
        self._base_model = base_model
        self._entity = entity
        self._upload_files = upload_files
        self._include_timing = include_timing_metrics
        self._keep_latest = keep_latest
        self._keep_best = keep_best
        #: Everything that could not be sent, in order.
        self.failures: list[SendFailure] = []
        #: Step -> checkpoint id of every step this callback registered or found registered.
        self.registered: dict[int, str] = {}
        self._saved_steps: set[int] = set()  # queued for registration, maybe not yet sent
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(maxsize=max_pending)
        self._worker: threading.Thread | None = None
        self._training = False

    @property
    def model_id(self) -> str | None:
        """The model's id, once known (at the start of training)."""
        return self._model_id

    # -- Trainer events ------------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        if self._model_id is None:
            assert self._project is not None and self._name is not None
            base_model = self._base_model or _name_or_path(model) or "unknown"
            self._model_id = self._client.models.create(
                project=self._project,
                name=self._name,
                base_model=base_model,
                entity=self._entity,
                return_existing=True,
            ).id
        self._training = True
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._work, name="ckpt-registry-callback", daemon=True
            )
            self._worker.start()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or self._model_id is None:
            return
        step = state.global_step
        metrics = metrics_from_history(state.log_history, step, include_timing=self._include_timing)
        snapshot = None
        if self._upload_files:
            folder = Path(str(args.output_dir)) / f"checkpoint-{step}"
            # The Trainer may delete this folder (save_total_limit) before the upload ends:
            # upload a snapshot of it, hard links where the file system allows.
            snapshot = _snapshot(folder)
        self._saved_steps.add(step)
        self._submit(lambda: self._send_checkpoint(step, metrics, snapshot))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        step = state.global_step
        if not state.is_world_process_zero or not logs or step not in self._saved_steps:
            return
        # Logged after the step was saved (an evaluation, the end-of-training summary).
        metrics = training_metrics(logs, include_timing=self._include_timing)
        if metrics:
            self._submit(lambda: self._send_metrics(step, metrics))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.wait()
        self._training = False

    # -- Public --------------------------------------------------------------------------------

    def wait(self) -> None:
        """Return once everything queued so far has been sent (or has failed)."""
        self._jobs.join()

    # -- Work ----------------------------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        if self._training and self._worker is not None and self._worker.is_alive():
            self._jobs.put(job)  # waits only while max_pending jobs are queued
        else:
            job()  # after train(): nothing to overlap with, so send it now

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            finally:
                self._jobs.task_done()

    def _fail(self, step: int, what: str, error: BaseException) -> None:
        logger.warning("ckpt-registry: could not %s step %d: %s", _VERBS[what], step, error)
        self.failures.append(SendFailure(step, what, error))

    def _send_checkpoint(self, step: int, metrics: dict[str, float], snapshot: Path | None) -> None:
        assert self._model_id is not None
        try:
            try:
                result = register_or_merge(self._client, self._model_id, step, metrics)
            except (CkptError, MetricConflict) as exc:
                self._fail(step, "register", exc)
                return
            self.registered[step] = result.checkpoint.id
            if snapshot is not None:
                try:
                    self._client.checkpoints.upload(
                        self._model_id, snapshot, checkpoint_id=result.checkpoint.id
                    )
                except (CkptError, OSError) as exc:
                    self._fail(step, "upload", exc)
                    return
            if self._keep_latest is not None:
                self._apply_retention(step)
        finally:
            if snapshot is not None:
                shutil.rmtree(snapshot.parent, ignore_errors=True)

    def _send_metrics(self, step: int, metrics: dict[str, float]) -> None:
        assert self._model_id is not None
        checkpoint_id = self.registered.get(step)
        if checkpoint_id is None:
            return  # its registration failed, which is already reported
        try:
            self._client.checkpoints.update_metrics(self._model_id, checkpoint_id, metrics)
        except NotFoundError:
            pass  # deleted since, by retention or a person: nothing to add the metrics to
        except CkptError as exc:
            self._fail(step, "metrics", exc)

    def _apply_retention(self, step: int) -> None:
        assert self._model_id is not None and self._keep_latest is not None
        try:
            result = self._client.checkpoints.retention(
                self._model_id, keep_latest=self._keep_latest, keep_best=self._keep_best
            )
        except CkptError as exc:
            self._fail(step, "retention", exc)
            return
        for deleted in result.deleted_steps:
            self.registered.pop(deleted, None)


_VERBS = {
    "register": "register",
    "upload": "upload the files of",
    "metrics": "send the late metrics of",
    "retention": "apply retention after",
}


def _name_or_path(model: Any) -> str | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name if isinstance(name, str) and name else None


def _snapshot(folder: Path) -> Path:
    """A copy of ``folder`` that later changes to it do not touch: hard links (free) when the
    temporary folder is on the same file system, else copies. Returns the copy; its parent is
    a temporary folder the caller removes."""
    parent = Path(tempfile.mkdtemp(prefix=".ckpt-upload-", dir=folder.parent))
    target = parent / folder.name

    def link_or_copy(source: str, destination: str) -> None:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    shutil.copytree(folder, target, copy_function=link_or_copy)
    return target
