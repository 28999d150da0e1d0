"""The registry's HTTP server: `create_app(settings)` builds the ASGI application."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
