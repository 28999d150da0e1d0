"""Storage: one interface (`Storage`), a backend per database, and the migrations."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Storage
from .urls import backend_of, postgres_dsn, sqlite_path


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """PostgreSQL connection settings; SQLite ignores them."""

    pool_size: int = 20
    connect_timeout: float = 5.0
    statement_timeout: float = 10.0


def open_storage(url: str, pool: PoolOptions | None = None) -> Storage:
    """The backend for `url`, not yet opened (`await storage.open()`)."""
    pool = pool or PoolOptions()
    if backend_of(url) == "sqlite":
        from .sqlite import SQLiteStorage

        return SQLiteStorage(sqlite_path(url))
    from .postgres import PostgresStorage

    return PostgresStorage(
        postgres_dsn(url),
        pool_max=pool.pool_size,
        connect_timeout=pool.connect_timeout,
        statement_timeout=pool.statement_timeout,
    )


__all__ = ["PoolOptions", "Storage", "open_storage"]
