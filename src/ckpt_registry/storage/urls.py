"""Database URLs: which backend a URL names, and the forms each library wants of it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.engine import make_url


class UnsupportedDatabaseUrl(ValueError):
    pass


def backend_of(url: str) -> str:
    """'sqlite' or 'postgresql'; `UnsupportedDatabaseUrl` with the accepted forms otherwise."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise UnsupportedDatabaseUrl(_accepted(url)) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return "sqlite"
    if backend in ("postgresql", "postgres"):
        return "postgresql"
    raise UnsupportedDatabaseUrl(_accepted(url))


def redacted(url: str) -> str:
    """`url` fit for a message or a log line: a password, or user info alone, replaced by `***`.

    URLs name credentials (`postgresql://admin:s3cret@db/x`): no message may carry them.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    if "@" not in parts.netloc:
        return url
    user_info, _, host = parts.netloc.rpartition("@")
    user, colon, _password = user_info.partition(":")
    # `user:password` keeps the user; user info alone may be a token (`https://TOKEN@host`).
    shown = f"{user}:***" if colon else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def _accepted(url: str) -> str:
    return (
        f"unsupported database URL {redacted(url)!r}: use sqlite:///PATH (a file) or "
        "postgresql://USER@HOST:PORT/DATABASE"
    )


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    assert database
    return Path(database)


def postgres_dsn(url: str) -> str:
    """The URL as asyncpg takes it (no SQLAlchemy driver suffix)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy takes it for migrations (PostgreSQL through asyncpg)."""
    if backend_of(url) == "postgresql":
        return (
            make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        )
    return url
