"""Outage episodes: a failure is logged when it starts and when it ends, not once per request."""

from __future__ import annotations

import logging
import threading
import time


class Episode:
    """Whether the database is failing now, and why: `system-check` reports it.

    `failed` logs a warning when an episode starts (or its reason changes); `succeeded` ends it with
    one line saying how long it lasted and how many requests it refused. Thread-safe: the SQLite
    writer thread and the event loop both report.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.reason: str | None = None
        self._since = 0.0
        self._refused = 0
        self._lock = threading.Lock()

    def failed(self, reason: str) -> None:
        with self._lock:
            self._refused += 1
            if reason == self.reason:
                return
            if self.reason is None:
                self._since = time.monotonic()
            self.reason = reason
        self.logger.warning("%s failing: %s (answering 503 until it recovers)", self.what, reason)

    def succeeded(self) -> None:
        if self.reason is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self.reason is None:
                return
            lasted, refused = time.monotonic() - self._since, self._refused
            self.reason, self._refused = None, 0
        self.logger.warning(
            "%s recovered after %.1f s (%d requests refused meanwhile)", self.what, lasted, refused
        )
