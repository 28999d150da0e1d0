"""The API's resources, each with a sync and an async class over the same request specs."""

from .checkpoints import AsyncCheckpoints, Checkpoints
from .files import AsyncFiles, Files
from .models import AsyncModels, Models

__all__ = ["AsyncCheckpoints", "AsyncFiles", "AsyncModels", "Checkpoints", "Files", "Models"]
