"""Domain errors raised by storage, each with its message; the server maps each to a status in one place.

StorageError
 ├── DatabaseUnavailable      the database cannot be reached, is locked or is full (503, Retry-After)
 ├── KeyNotFound              no key with that id (CLI)
 ├── ModelNotFound            unknown, malformed, deleted or another entity's model (404)
 ├── ModelNameTaken           a live model already has that (entity, project, name) (409)
 ├── CheckpointNotFound       no live checkpoint with that id in the model (404)
 ├── FileNotFound             the checkpoint has no file at that path (404)
 ├── FileConflict             the path holds a file with other content (409)
 ├── UploadNotFound           no upload in progress with that id for the entity (404)
 ├── StepConflict             the step is registered with different metrics (409)
 ├── MetricNotFound           no live checkpoint of the model has the metric (404)
 ├── TooManyMetrics           a merge would leave a checkpoint with over 1,000 metrics (422)
 ├── UnstorableText           text with NUL or a lone surrogate, which no backend can store (422)
 └── InvalidCursor            `after` names no checkpoint or model of this list (422)
      └── CursorExpired       `after` names a tombstone that was purged (422)
"""

from __future__ import annotations

from ..contract import MAX_METRICS

# Kept importable from here: older code and tests read it as `storage.errors.MAX_METRICS`.
__all__ = [
    "MAX_METRICS",
    "CheckpointNotFound",
    "CursorExpired",
    "DatabaseUnavailable",
    "FileConflict",
    "FileNotFound",
    "InvalidCursor",
    "KeyNotFound",
    "MetricNotFound",
    "ModelNameTaken",
    "ModelNotFound",
    "StepConflict",
    "StorageError",
    "TooManyMetrics",
    "UnstorableText",
    "UploadNotFound",
]


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DatabaseUnavailable(StorageError):
    """The database cannot serve the request now; `retry_after` says when trying again makes sense."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeyNotFound(StorageError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id!r}")


class ModelNotFound(StorageError):
    def __init__(self) -> None:
        super().__init__("Model not found")


class ModelNameTaken(StorageError):
    def __init__(self, project: str, name: str) -> None:
        super().__init__(f"A model named {name!r} already exists in project {project!r}")


class CheckpointNotFound(StorageError):
    def __init__(self) -> None:
        super().__init__("Checkpoint not found")


class FileNotFound(StorageError):
    def __init__(self) -> None:
        super().__init__("File not found")


class FileConflict(StorageError):
    def __init__(self) -> None:
        super().__init__(
            "The path already holds a file with other content: delete it first to replace it"
        )


class UploadNotFound(StorageError):
    def __init__(self) -> None:
        super().__init__("Upload not found")


class StepConflict(StorageError):
    def __init__(self, step: int) -> None:
        super().__init__(f"Step {step} already has a checkpoint with different metrics")


class MetricNotFound(StorageError):
    def __init__(self, metric: str) -> None:
        super().__init__(f"No checkpoint of this model has the metric {metric!r}")


class TooManyMetrics(StorageError):
    def __init__(self, count: int) -> None:
        super().__init__(
            f"the merge would leave the checkpoint with {count} metrics; "
            f"at most {MAX_METRICS} are allowed"
        )


class UnstorableText(StorageError):
    def __init__(self) -> None:
        super().__init__("text must not contain NUL characters or lone surrogates")


class InvalidCursor(StorageError):
    @classmethod
    def for_checkpoints(cls) -> InvalidCursor:
        return cls("after is not the id of a checkpoint of this model")

    @classmethod
    def for_models(cls) -> InvalidCursor:
        return cls("after is not the id of a model in this list")


class CursorExpired(InvalidCursor):
    def __init__(self) -> None:
        super().__init__(
            "after names a checkpoint deleted so long ago that its position was purged: "
            "the cursor expired, start the walk again"
        )
