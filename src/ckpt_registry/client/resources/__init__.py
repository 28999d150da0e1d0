"""The API's resources, each with a sync and an async class over the same request specs."""

from .checkpoints import AsyncCheckpoints, Checkpoints
from .models import AsyncModels, Models

__all__ = ["AsyncCheckpoints", "AsyncModels", "Checkpoints", "Models"]
