"""The PostgreSQL backend: the pool and outages (`pool.py`), the key cache kept exact by LISTEN/NOTIFY
(`keys.py`), the SQL (`queries.py`) and the `Storage` class (`backend.py`)."""

from __future__ import annotations

from .backend import PostgresStorage
from .keys import KEYS_CHANNEL

__all__ = ["KEYS_CHANNEL", "PostgresStorage"]
