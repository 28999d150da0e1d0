"""How the list benchmark measures each figure: list load, page depth, a full walk, registrations."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from _common import HERE, HOST, OUT, log
from _data import BASE_MODEL, METRIC_NAMES, PROJECT, Dataset, checkpoint_ids
from _servers import Server, WrkResult, run_wrk
from ckpt_registry.contract import (
    CHECKPOINTS_PATH,
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    MODELS_PATH,
)
from ckpt_registry.storage.urls import sqlite_path

LIST_LIMIT = LIST_LIMIT_DEFAULT  # the page wrk asks for, and the limit serves
WALK_LIMIT = LIST_LIMIT_MAX
CURSOR_SAMPLE = 10_000
MIB = 1024 * 1024


def list_path(model_id: str) -> str:
    return CHECKPOINTS_PATH.format(model_id=model_id)


class Sampler(threading.Thread):
    """Calls `read` every `interval` seconds on a thread while in its `with` block, keeping the
    values (a read that raises OSError, such as a file not there yet, is skipped)."""

    def __init__(self, read: Callable[[], int], interval: float) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.interval = interval
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.samples.append(self.read())
            if self.halt.wait(self.interval):
                return

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.halt.set()
        self.join()


# List load ------------------------------------------------------------------------------------


def sample_cursors(server: Server, data: Dataset) -> tuple[Path, str, str]:
    """A file of real checkpoint ids spread across the model; also the ids of step 0's page and
    of a checkpoint near the end (cursors for the first and deep pages).

    Only steps that leave a full page after them are sampled, so every loaded page has 20 items,
    like the limit's.
    """
    rng = random.Random(7)
    top = max(data.rows - LIST_LIMIT - 1, 1)
    steps = sorted(rng.sample(range(top), min(CURSOR_SAMPLE, top)))
    ids = checkpoint_ids(data, steps)
    deep_id = checkpoint_ids(data, [top - 1])[0]
    path = OUT / f"cursors-{server.name}.txt"
    path.write_text("\n".join(ids) + "\n")
    return path, deep_id, ids[0]


def fetch_page(server: Server, data: Dataset, after: str) -> bytes:
    response = httpx.get(
        f"{server.base_url}{list_path(data.model_id)}",
        params={"limit": LIST_LIMIT, "after": after},
        headers={"Authorization": f"Bearer {data.key}"},
    )
    response.raise_for_status()
    body = response.content
    assert len(orjson.loads(body)["data"]) == LIST_LIMIT
    return body


@dataclass
class ListLoad:
    ours: list[WrkResult] = field(default_factory=list)
    limit: list[WrkResult] = field(default_factory=list)

    def ratio(self) -> float:
        return mean_rps(self.ours) / mean_rps(self.limit)


def mean_rps(results: list[WrkResult]) -> float:
    return statistics.fmean(r.requests_per_second for r in results)


def load_list(
    ours: Server, limit: Server, data: Dataset, cursors: Path, duration: float, rounds: int
) -> ListLoad:
    script = HERE / "wrk" / "list.lua"
    env = {
        "CKPT_BENCH_PATH": list_path(data.model_id),
        "CKPT_BENCH_CURSORS": str(cursors),
        "CKPT_BENCH_KEY": data.key,
        "CKPT_BENCH_LIMIT": str(LIST_LIMIT),
    }
    result = ListLoad()
    # Warm both (caches, first connections) before anything is recorded.
    for server in (ours, limit):
        run_wrk(
            server.base_url + "/", duration=2, threads=2, connections=32, script=script, env=env
        )
    for round_number in range(1, rounds + 1):
        for server, results in ((ours, result.ours), (limit, result.limit)):
            measured = run_wrk(
                server.base_url + "/",
                duration=duration,
                threads=2,
                connections=32,
                script=script,
                env=env,
            )
            results.append(measured)
            log(
                f"  round {round_number} {server.name:<14} {measured.requests_per_second:>9,.0f} req/s  "
                f"p50 {measured.p50_ms:6.2f} ms  p99 {measured.p99_ms:6.2f} ms  errors {measured.errors}"
            )
    return result


# Page depth -----------------------------------------------------------------------------------


def page_latencies(
    ours: Server, data: Dataset, deep_id: str, duration: float, rounds: int = 4
) -> dict[str, list[float]]:
    """p50 of sequential requests (one connection) for the first page and a page near the end.

    The server is pinned to CPU 0 and wrk to CPU 1 meanwhile: unpinned, the two migrate between the
    two cores and a run's p50 varies by 2x, which would drown a depth effect of 10-20%.
    """
    urls = {
        "first": f"{ours.base_url}{list_path(data.model_id)}?limit={LIST_LIMIT}",
        "deep": f"{ours.base_url}{list_path(data.model_id)}?limit={LIST_LIMIT}&after={deep_id}",
    }
    for url in urls.values():  # both must be real, full pages
        response = httpx.get(url, headers={"Authorization": f"Bearer {data.key}"})
        response.raise_for_status()
        assert len(response.json()["data"]) == LIST_LIMIT, response.text[:200]
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    affinity = os.sched_getaffinity(ours.pid)
    prefix = ["taskset", "-c", "1"] if pinned else []
    if pinned:
        os.sched_setaffinity(ours.pid, {0})
    p50s: dict[str, list[float]] = {"first": [], "deep": []}
    try:
        for _ in range(rounds):
            for position, url in urls.items():
                measured = run_wrk(
                    url,
                    duration=duration,
                    threads=1,
                    connections=1,
                    headers=[f"Authorization: Bearer {data.key}"],
                    prefix=prefix,
                )
                p50s[position].append(measured.p50_ms)
                log(
                    f"  {position:<5} page p50 {measured.p50_ms * 1000:7.0f} us  "
                    f"({measured.requests_per_second:,.0f} req/s sequential, errors {measured.errors})"
                )
    finally:
        os.sched_setaffinity(ours.pid, affinity)
    return p50s


# A full walk and the server's memory ----------------------------------------------------------


def status_kb(pid: int, name: str) -> int:
    """A `Vm...` figure of /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise OSError(f"no {name} in /proc/{pid}/status")


@dataclass
class Walk:
    seconds: float
    count: int
    pages: int
    peak_rss_mb: float
    hwm_mb: float
    start_rss_mb: float
    ordered: bool


def full_walk(server: Server, data: Dataset) -> Walk:
    """Page through the whole model at `limit=100`, the server's VmRSS sampled every 50 ms."""
    start_rss = status_kb(server.pid, "VmRSS")
    url = f"{server.base_url}{list_path(data.model_id)}"
    count, pages, last_step, ordered = 0, 0, -1, True
    with Sampler(lambda: status_kb(server.pid, "VmRSS"), 0.05) as rss:
        began = time.perf_counter()
        with httpx.Client(headers={"Authorization": f"Bearer {data.key}"}, timeout=30) as client:
            params: dict[str, Any] = {"limit": WALK_LIMIT, "order": "asc"}
            while True:
                response = client.get(url, params=params)
                response.raise_for_status()
                page = orjson.loads(response.content)
                pages += 1
                items = page["data"]
                count += len(items)
                if items:
                    ordered = ordered and items[0]["step"] > last_step
                    last_step = items[-1]["step"]
                if not page["has_more"] or not items:
                    break
                params["after"] = items[-1]["id"]
        seconds = time.perf_counter() - began
    return Walk(
        seconds,
        count,
        pages,
        max([start_rss, *rss.samples]) / 1024,
        status_kb(server.pid, "VmHWM") / 1024,
        start_rss / 1024,
        ordered,
    )


# Registrations --------------------------------------------------------------------------------


@dataclass
class WalSizes:
    """The SQLite write-ahead log's size in bytes around a sustained load."""

    start: int
    peak: int  # the largest sample, every WAL_SAMPLE_SECONDS during the load
    end: int  # as the load stopped
    after: int  # WAL_SETTLE_SECONDS later, the server idle
    samples: int


WAL_SAMPLE_SECONDS = 0.5
WAL_SETTLE_SECONDS = 2.0


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0  # SQLite removes the WAL when its last connection closes


@dataclass
class Registrations:
    per_second: float
    created: int
    other_statuses: dict[int, int]
    listed: int
    clients: int
    seconds: float
    p50_ms: float
    p99_ms: float
    wal: WalSizes | None  # SQLite only


async def register_concurrently(
    server: Server, data: Dataset, clients: int, duration: float
) -> tuple[str, dict[int, int], float, list[float]]:
    """POST unique steps to a fresh model from `clients` keep-alive connections for `duration`.

    A minimal HTTP/1.1 client on asyncio streams: the load generator shares the machine's two cores
    with the server, and a full HTTP client would cost more CPU than the server's own handler. Each
    connection waits for its answer before sending the next request, and stops only between
    requests, so every request sent has its response counted.
    """
    headers = {"Authorization": f"Bearer {data.key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
        response = await client.post(
            MODELS_PATH,
            json={
                "project": PROJECT,
                "name": f"registrations-{uuid.uuid4()}",
                "base_model": BASE_MODEL,
            },
        )
        response.raise_for_status()
        model_id = response.json()["id"]
    path = list_path(model_id)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    steps = iter(range(10**12))
    rng = random.Random(3)
    deadline = 0.0

    async def client_loop() -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            while time.perf_counter() < deadline:
                body = orjson.dumps(
                    {"step": next(steps), "metrics": {name: rng.random() for name in METRIC_NAMES}}
                )
                request = (
                    f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {data.key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)[1])  # type: ignore[index]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    deadline = time.perf_counter() + duration
    began = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return model_id, statuses, time.perf_counter() - began, latencies


def count_through_api(server: Server, data: Dataset, model_id: str) -> int:
    count = 0
    url = f"{server.base_url}{list_path(model_id)}"
    with httpx.Client(headers={"Authorization": f"Bearer {data.key}"}, timeout=30) as client:
        params: dict[str, Any] = {"limit": LIST_LIMIT_MAX}
        while True:
            page = client.get(url, params=params).raise_for_status().json()
            count += len(page["data"])
            if not page["has_more"] or not page["data"]:
                return count
            params["after"] = page["data"][-1]["id"]


def registrations(server: Server, data: Dataset, clients: int, duration: float) -> Registrations:
    """Sustained registrations; on SQLite, the WAL's size sampled through the load and after it."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    wal_path = Path(f"{sqlite_path(data.database_url)}-wal") if data.is_sqlite else None

    def read_wal() -> int:
        return file_size(wal_path) if wal_path else 0

    wal_start = read_wal()
    try:
        with Sampler(read_wal, WAL_SAMPLE_SECONDS) as wal:
            model_id, statuses, seconds, latencies = asyncio.run(
                register_concurrently(server, data, clients, duration)
            )
            wal_end = read_wal()
    finally:
        asyncio.set_event_loop_policy(None)
    wal_sizes = None
    if wal_path:
        time.sleep(WAL_SETTLE_SECONDS)
        wal_sizes = WalSizes(
            wal_start, max([*wal.samples, wal_end]), wal_end, read_wal(), len(wal.samples)
        )
    created = statuses.pop(201, 0)
    listed = count_through_api(server, data, model_id)
    latencies.sort()
    return Registrations(
        created / seconds,
        created,
        statuses,
        listed,
        clients,
        seconds,
        latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
        wal_sizes,
    )
