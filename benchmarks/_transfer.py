"""What the transfer benchmarks share: the server software under test, the 1 GiB file, and one timed
upload or download with the server's CPU time and peak RSS beside it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _common import HERE, HOST, OUT, log
from _servers import VENV_BIN, Server, free_port, spawn, wait_until_up

MB = 1_000_000  # rates are in MB/s (10^6 bytes a second), sizes in MiB
MIB = 1024 * 1024
SOURCE_CHUNK = 4 * MIB
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# The server software ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Software:
    """One way of serving an ASGI app: the command, given the app's import target and a port."""

    name: str
    command: Callable[[str, int, bool, int], list[str]]  # (target, port, factory, workers) -> argv


def uvicorn_command(http: str) -> Callable[[str, int, bool, int], list[str]]:
    def command(target: str, port: int, factory: bool, workers: int) -> list[str]:
        # `ckpt serve`'s options: uvloop (its "auto" picks it), no access log.
        return [
            sys.executable,
            *("-m", "uvicorn", target, "--host", HOST, "--port", str(port)),
            *("--workers", str(workers), "--loop", "uvloop", "--http", http, "--no-access-log"),
            *("--log-level", "warning"),
            *(["--factory"] if factory else []),
        ]

    return command


def granian_command(target: str, port: int, factory: bool, workers: int) -> list[str]:
    return [
        str(VENV_BIN / "granian"),
        *("--interface", "asgi", "--host", HOST, "--port", str(port), "--workers", str(workers)),
        *("--loop", "uvloop", "--no-access-log", "--log-level", "warning"),
        *(["--factory"] if factory else []),
        target,
    ]


UVICORN_H11 = Software("uvicorn h11", uvicorn_command("h11"))
UVICORN_HTTPTOOLS = Software("uvicorn httptools", uvicorn_command("httptools"))
GRANIAN = Software("granian", granian_command)
SOFTWARE = (UVICORN_H11, UVICORN_HTTPTOOLS, GRANIAN)


def serve(
    software: Software,
    target: str,
    *,
    env: dict[str, str],
    factory: bool = False,
    workers: int = 1,
    prefix: list[str] | None = None,
    log_name: str,
) -> Server:
    """Start `target` under `software` (benchmarks/ on the import path) and wait for its health."""
    port = free_port()
    log_path = OUT / f"{log_name}.log"
    child = spawn(
        [*(prefix or []), *software.command(target, port, factory, workers)],
        log_path=log_path,
        env={**os.environ, "PYTHONPATH": str(HERE), **env},
    )
    server = Server(software.name, f"http://{HOST}:{port}", child)
    wait_until_up(server.base_url, child, log_path)
    return server


# The process tree's CPU time and memory --------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (granian serves from a child of the process we start)."""
    pids, index = [pid], 0
    while index < len(pids):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pids[index]}/task"):
                children = Path(f"/proc/{pids[index]}/task/{task}/children").read_text()
                pids.extend(int(child) for child in children.split())
        index += 1
    return pids


def tree_cpu_seconds(pid: int) -> float:
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * PAGE
    return total


class PeakRss(threading.Thread):
    """The largest RSS of a process tree, sampled every 20 ms while in its `with` block."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            if self.halt.wait(0.02):
                return

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.halt.set()
        self.join()
        self.peak = max(self.peak, tree_rss_bytes(self.pid))


# One transfer -----------------------------------------------------------------------------------


@dataclass
class Transfer:
    size: int
    seconds: float
    server_cpu: float  # seconds of CPU the server's processes used during the transfer
    client_cpu: float  # seconds of CPU the client used
    peak_rss: int  # bytes, the server's process tree

    @property
    def mb_per_second(self) -> float:
        return self.size / self.seconds / MB


class TransferFailed(RuntimeError):
    """An upload or download did not move the whole file intact."""


def run_client(args: list[str]) -> tuple[str, float]:
    """Run a client command; its standard output and the CPU seconds it used."""
    # Popen, not run: os.wait4 reaps the child and tells its CPU time (the clients print little,
    # so reading stdout to its end and then stderr cannot fill a pipe).
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    output, errors = child.stdout.read(), child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise TransferFailed(f"{args[0]} exited {child.returncode}: {errors.decode().strip()}")
    return output.decode(), usage.ru_utime + usage.ru_stime


def timed(server_pid: int | None, move: Callable[[], float]) -> tuple[float, float, float, int]:
    """Run `move` (which returns the client's CPU seconds): wall seconds, server CPU seconds,
    client CPU seconds, peak server RSS (0 without a server)."""
    if server_pid is None:
        began = time.perf_counter()
        client_cpu = move()
        return time.perf_counter() - began, 0.0, client_cpu, 0
    cpu_before = tree_cpu_seconds(server_pid)
    with PeakRss(server_pid) as rss:
        began = time.perf_counter()
        client_cpu = move()
        seconds = time.perf_counter() - began
    return seconds, tree_cpu_seconds(server_pid) - cpu_before, client_cpu, rss.peak


def curl_upload(url: str, source: Path, headers: dict[str, str]) -> tuple[int, str, float]:
    """PUT the file with curl: (status, response body, client CPU seconds)."""
    response = OUT / "transfer-response.json"
    args = ["curl", "-sS", "-T", str(source), "-o", str(response), "-w", "%{http_code}"]
    # No `Expect: 100-continue` round trip: the servers under test answer it, but it is a pause.
    for name, value in {"Expect": "", **headers}.items():
        args += ["-H", f"{name}: {value}"]
    output, cpu = run_client([*args, url])
    return int(output), response.read_text(), cpu


def curl_download(url: str, headers: dict[str, str]) -> tuple[int, int, float]:
    """GET into /dev/null with curl: (status, bytes received, client CPU seconds)."""
    args = ["curl", "-sS", "-o", os.devnull, "-w", "%{http_code} %{size_download}"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    output, cpu = run_client([*args, url])
    status, size = output.split()
    return int(status), int(size), cpu


def httpx_upload(url: str, source: Path, headers: dict[str, str]) -> tuple[int, str, float]:
    def chunks() -> Iterator[bytes]:
        with source.open("rb", buffering=0) as file:
            while chunk := file.read(SOURCE_CHUNK):
                yield chunk

    cpu = time.process_time()
    response = httpx.put(
        url,
        content=chunks(),
        headers={"Content-Length": str(source.stat().st_size), **headers},
        timeout=120,
    )
    return response.status_code, response.text, time.process_time() - cpu


def httpx_download(url: str, headers: dict[str, str]) -> tuple[int, int, float]:
    cpu = time.process_time()
    size = 0
    with httpx.stream("GET", url, headers=headers, timeout=120) as response:
        for chunk in response.iter_raw(SOURCE_CHUNK):
            size += len(chunk)
    return response.status_code, size, time.process_time() - cpu


CLIENTS = {"curl": (curl_upload, curl_download), "httpx": (httpx_upload, httpx_download)}


def upload(
    client: str,
    url: str,
    source: Path,
    sha256: str,
    server_pid: int | None,
    headers: dict[str, str] | None = None,
    stored_sha256: Callable[[], str] | None = None,
) -> Transfer:
    """PUT `source` to `url`; the answer must be 200/201 with JSON naming the file's sha256, or,
    for a server whose answer does not name it (MLflow's), `stored_sha256()` must be it."""
    put = CLIENTS[client][0]
    outcome: list[tuple[int, str, float]] = []

    def move() -> float:
        outcome.append(put(url, source, headers or {}))
        return outcome[0][2]

    seconds, server_cpu, client_cpu, peak = timed(server_pid, move)
    status, body, _ = outcome[0]
    if status not in (200, 201):
        raise TransferFailed(f"PUT {url} answered {status}: {body[:300]}")
    if stored_sha256 is not None:
        if stored_sha256() != sha256:
            raise TransferFailed(f"PUT {url} answered {status}, but stored other bytes")
    elif sha256 not in body:
        raise TransferFailed(f"PUT {url} answered {status}: {body[:300]}")
    return Transfer(source.stat().st_size, seconds, server_cpu, client_cpu, peak)


def download(
    client: str,
    url: str,
    size: int,
    server_pid: int | None,
    headers: dict[str, str] | None = None,
) -> Transfer:
    """GET `url`; the answer must be 200 with exactly `size` bytes."""
    get = CLIENTS[client][1]
    outcome: list[tuple[int, int, float]] = []

    def move() -> float:
        outcome.append(get(url, headers or {}))
        return outcome[0][2]

    seconds, server_cpu, client_cpu, peak = timed(server_pid, move)
    status, received, _ = outcome[0]
    if status != 200 or received != size:
        raise TransferFailed(f"GET {url} answered {status} with {received:,} of {size:,} bytes")
    return Transfer(size, seconds, server_cpu, client_cpu, peak)


def copy(source: Path, target: Path) -> Transfer:
    """`cp`, then `sync` of the copy (the upload sink fsyncs its file too)."""

    def move() -> float:
        return (
            run_client(["cp", str(source), str(target)])[1] + run_client(["sync", str(target)])[1]
        )

    seconds, _, client_cpu, _ = timed(None, move)
    target.unlink()
    return Transfer(source.stat().st_size, seconds, 0.0, client_cpu, 0)


# The file ---------------------------------------------------------------------------------------


TAIL = 32  # the bytes `Source.renew` rewrites


@dataclass
class Source:
    """The file the benchmarks move, and the sha256 state of all but its last `TAIL` bytes."""

    path: Path
    size: int
    head: Any  # hashlib's sha256 object over the first size - TAIL bytes

    def renew(self) -> str:
        """New random last bytes, so that every upload is new content (the files route stores
        identical content once, and could skip writing it); the file's new sha256."""
        tail = os.urandom(TAIL)
        with self.path.open("r+b") as file:
            file.seek(self.size - TAIL)
            file.write(tail)
        digest = self.head.copy()
        digest.update(tail)
        return str(digest.hexdigest())


def source_file(size_mib: int) -> Source:
    """A file of `size_mib` MiB of random bytes in benchmarks/out/ (kept for the next run).
    Random, so that nothing on the way can compress it."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"transfer-{size_mib}MiB.bin"
    size = size_mib * MIB
    if not path.exists() or path.stat().st_size != size:
        log(f"writing {size_mib} MiB of random bytes to {path}")
        partial = path.with_suffix(".partial")
        with partial.open("wb") as file:
            for _ in range(size_mib):
                file.write(os.urandom(MIB))
        partial.rename(path)
    head = hashlib.sha256()
    with path.open("rb", buffering=0) as file:
        left = size - TAIL
        while left:
            chunk = file.read(min(SOURCE_CHUNK, left))
            head.update(chunk)
            left -= len(chunk)
    return Source(path, size, head)
