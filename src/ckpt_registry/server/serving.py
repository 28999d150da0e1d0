"""Running the server under uvicorn for `ckpt serve`: its logging, and the metrics' process set-up
(the shared folder of multi-process mode, the separate metrics port).

`python -m ckpt_registry.server.serving` serves with the settings in the environment (`CKPT_*`); this
is what `ckpt serve` becomes once its start-up checks have passed (`exec_server`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from .requestlog import log_config
from .settings import Settings
from .slow_clients import ConnectionLimits, GuardedHttpToolsProtocol, raise_descriptor_limit


@contextlib.contextmanager
def metrics_processes(settings: Settings) -> Iterator[None]:
    """With several workers, a fresh folder they write their values to (set before any of them
    imports `prometheus_client`, removed at exit), and the metrics port's server, here in the
    parent, reading it. One worker serves its own metrics port (`app.py`)."""
    if settings.metrics == "off" or settings.workers == 1:
        yield
        return
    folder = tempfile.mkdtemp(prefix="ckpt-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    server = None
    try:
        if settings.metrics_port is not None:
            from prometheus_client import start_http_server

            from .metrics import exposition_registry

            server, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=exposition_registry()
            )
        yield
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def run_server(settings: Settings) -> None:
    import uvicorn

    raise_descriptor_limit(settings.max_connections)
    # A class and its settings, both picklable: uvicorn hands them to each worker process.
    protocol: Any = functools.partial(
        GuardedHttpToolsProtocol,
        limits=ConnectionLimits(
            header_timeout=settings.header_timeout_seconds,
            min_body_rate=settings.min_body_rate,
            body_rate_grace=settings.body_rate_grace_seconds,
            max_connections=settings.max_connections,
        ),
    )
    with metrics_processes(settings):
        uvicorn.run(
            "ckpt_registry.server.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http=protocol,
            # No route speaks WebSocket; an upgrade would also hand the connection to a protocol
            # the slow-client watch does not follow.
            ws="none",
            access_log=False,
            log_config=log_config(settings.log_format),
        )


def exec_server() -> None:
    """Replace this process (same PID, so supervisors and signals are unaffected) with a fresh Python
    that only serves, with the settings in the environment.

    `ckpt serve` has loaded the CLI, the SDK, Alembic and Mako for its checks and migration; none of
    it is needed to serve, and a process keeps what it imported: serving from a new interpreter
    saves ~25 MB of RSS per server (docs/performance.md, "Transfers")."""
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ)
    # glibc gives each thread that allocates its own malloc arena, and an arena keeps freed memory
    # up to its trim threshold: every blob thread that read 4 MiB chunks would hold ~10 MB more.
    # Two arenas (the event loop's, and one the blob threads share) keep a download's peak RSS
    # ~10 MB lower; allocations there are few and large, so sharing costs no throughput.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    os.execve(sys.executable, [sys.executable, "-m", "ckpt_registry.server.serving"], env)


def main() -> None:
    run_server(Settings())


if __name__ == "__main__":
    main()
