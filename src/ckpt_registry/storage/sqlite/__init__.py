"""The SQLite backend: reads on the event loop, writes through one writer thread (`writer.py`)."""

from __future__ import annotations

from .backend import SQLiteStorage, format_timestamp, parse_timestamp

__all__ = ["SQLiteStorage", "format_timestamp", "parse_timestamp"]
