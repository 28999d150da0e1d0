"""Domain errors raised by storage; the server maps each one to a status in one place.

MAX_METRICS is the most metrics one checkpoint may hold (the API contract, section 5).

StorageError
 ├── DatabaseUnavailable      the database cannot be reached (503)
 ├── KeyNotFound              no key with that id (CLI)
 ├── ModelNotFound            unknown, malformed, deleted or another entity's model (404)
 ├── ModelNameTaken           a live model already has that (entity, project, name) (409)
 ├── CheckpointNotFound       no live checkpoint with that id in the model (404)
 ├── StepConflict             the step is registered with different metrics (409)
 ├── MetricNotFound           no live checkpoint of the model has the metric (404)
 ├── TooManyMetrics           a merge would leave a checkpoint with over 1,000 metrics (422)
 └── InvalidCursor            `after` names no checkpoint or model of this list (422)
      └── CursorExpired       `after` names a tombstone that was purged (422)
"""

from __future__ import annotations

MAX_METRICS = 1000


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DatabaseUnavailable(StorageError):
    pass


class KeyNotFound(StorageError):
    pass


class ModelNotFound(StorageError):
    def __init__(self) -> None:
        super().__init__("Model not found")


class ModelNameTaken(StorageError):
    pass


class CheckpointNotFound(StorageError):
    def __init__(self) -> None:
        super().__init__("Checkpoint not found")


class StepConflict(StorageError):
    pass


class MetricNotFound(StorageError):
    pass


class TooManyMetrics(StorageError):
    pass


class InvalidCursor(StorageError):
    pass


class CursorExpired(InvalidCursor):
    pass
