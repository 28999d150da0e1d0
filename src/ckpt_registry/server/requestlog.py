"""Log lines: the request each one belongs to, the access line, and the text or JSON format.

A request's id and entity live in a context variable that the request layer (`observe.py`) sets,
so any line logged while a request is served (a warning from the database, the access line) carries
them. No line ever holds a key or an `Authorization` header: the access line is built here from
named fields, never from the request's headers.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

access_log = logging.getLogger("ckpt_registry.access")

# A client's own id is kept when it is plainly an id: short, and only characters that need no
# escaping in a header, a log line or a shell (no spaces, quotes or control characters).
REQUEST_ID_MAX = 128
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,%d}" % REQUEST_ID_MAX)


def accepted_request_id(value: bytes | None) -> bytes | None:
    """The client's `X-Request-ID` when it is plainly an id, else None (one is generated)."""
    return value if value is not None and _REQUEST_ID.fullmatch(value) else None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    entity: str | None = None


current_request: ContextVar[RequestContext | None] = ContextVar("current_request", default=None)


def note_entity(entity: str) -> None:
    """Called by authentication: the entity the request acts for, for its log lines."""
    context = current_request.get()
    if context is not None:
        context.entity = entity


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's id and entity, and
    the access line's fields when the record has them."""

    FIELDS = ("method", "route", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = current_request.get()
        if context is not None:
            line["request_id"] = context.request_id
            line["entity"] = context.entity
        for field in self.FIELDS:
            if field in record.__dict__:
                line[field] = record.__dict__[field]
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    """uvicorn's familiar `LEVEL:     message`, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname + ':':<10}{record.getMessage()}"
        context = current_request.get()
        if context is not None and record.name != access_log.name:
            text += f" [request {context.request_id}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def log_config(log_format: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn's `log_config`: our loggers and uvicorn's, one
    format. uvicorn's own access log stays off: our access line (`ckpt_registry.access`) replaces it,
    with the route template, the request id and the entity."""
    formatter = JSONFormatter if log_format == "json" else TextFormatter
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "ckpt_registry": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }


def log_access(method: str, route: str, status: int, seconds: float) -> None:
    duration_ms = round(seconds * 1000, 3)
    access_log.info(
        "%s %s %d %.3fms",
        method,
        route,
        status,
        duration_ms,
        extra={"method": method, "route": route, "status": status, "duration_ms": duration_ms},
    )
