"""The processes the list benchmark starts (our server, the limit, wrk), and how it stops them.

Every child runs in its own process group and is remembered, so `stop_children` ends all of them on
exit, on an error and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _common import HERE, HOST, OUT, ROOT
from ckpt_registry.contract import API_PREFIX

VENV_BIN = Path(sys.executable).parent

CHILDREN: list[subprocess.Popen[bytes]] = []


def spawn(
    args: list[str],
    *,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    capture: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, remembered so that `stop_children` ends it."""
    stdout: Any = (
        subprocess.PIPE if capture else (log_path.open("wb") if log_path else subprocess.DEVNULL)
    )
    child = subprocess.Popen(
        args, stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
    )
    CHILDREN.append(child)
    return child


def stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    if child in CHILDREN:
        CHILDREN.remove(child)


def stop_children() -> None:
    for child in list(CHILDREN):
        stop(child)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until_up(base_url: str, child: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"server exited with {child.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}{API_PREFIX}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"server at {base_url} did not come up within 60 s; see {log_path}")


@dataclass
class Server:
    name: str
    base_url: str
    child: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


def start_ours(name: str, database_url: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log_path = OUT / f"{name}.log"
    # One worker, so the process we start is the process that serves (its RSS is the server's).
    child = spawn(
        [
            str(VENV_BIN / "ckpt"),
            "serve",
            "--database-url",
            database_url,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
        ],
        log_path=log_path,
        # The blob store is named: PostgreSQL needs one, and no file is uploaded here anyway.
        env={
            **os.environ,
            "CKPT_GC_INTERVAL_SECONDS": "0",
            "CKPT_BLOB_URL": str(OUT / f"{name}-blobs"),
            **(env or {}),
        },
    )
    base_url = f"http://{HOST}:{port}"
    wait_until_up(base_url, child, log_path)
    return Server(name, base_url, child)


def start_limit(name: str, body_path: Path) -> Server:
    port = free_port()
    log_path = OUT / f"{name}.log"
    # `ckpt serve` runs uvicorn with loop and http "auto", which pick uvloop and httptools when
    # installed (they are dependencies); name them here so the limit cannot silently differ.
    child = spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(HERE),
            "limit_app:app",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "info",
        ],
        log_path=log_path,
        env={**os.environ, "CKPT_BENCH_LIMIT_BODY": str(body_path)},
    )
    base_url = f"http://{HOST}:{port}"
    wait_until_up(base_url, child, log_path)
    return Server(name, base_url, child)


# wrk ------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx responses plus socket errors


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> WrkResult:
    percentiles = {
        int(match[1]): float(match[2]) * UNIT_MS[match[3]]
        for match in re.finditer(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    if rps is None or total is None or set(percentiles) != {50, 99}:
        raise RuntimeError(f"could not parse wrk's output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkResult(float(rps[1]), percentiles[50], percentiles[99], int(total[1]), errors)


def run_wrk(
    url: str,
    *,
    duration: float,
    threads: int,
    connections: int,
    script: Path | None = None,
    env: dict[str, str] | None = None,
    headers: list[str] | None = None,
    prefix: list[str] | None = None,
) -> WrkResult:
    args = [
        *(prefix or []),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",  # wrk takes whole seconds
        "--latency",
        "--timeout",
        "10s",
    ]
    for header in headers or []:
        args += ["-H", header]
    if script is not None:
        args += ["-s", str(script)]
    child = spawn([*args, url], env={**os.environ, **(env or {})}, capture=True)
    try:
        output, _ = child.communicate(timeout=duration + 60)
    finally:
        stop(child)
    return parse_wrk(output.decode())
