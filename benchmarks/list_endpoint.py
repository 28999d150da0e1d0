"""Benchmark the list endpoint against its limit, at 1,000,000 checkpoints, in one run.

    .venv/bin/python benchmarks/list_endpoint.py [--rows 1000000] [--postgres-url URL] [--duration 10]

Builds (or reuses, from benchmarks/out/) a model with `--rows` checkpoints, serves it with
`ckpt serve`, serves a raw ASGI app returning the same page bytes with the same uvicorn options (the
limit), loads both alternately with wrk, and prints a table of every figure against its target. What
each figure means and the last results: docs/performance.md. Needs `wrk` (apt-get install -y wrk).
Always exits 0 once it has run: it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage.migrate import downgrade, upgrade
from ckpt_registry.storage.urls import postgres_dsn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
LIST_LIMIT = 20
WALK_LIMIT = 100
CURSOR_SAMPLE = 10_000
METRIC_NAMES = ("loss", "accuracy", "reward", "kl", "learning_rate")
TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
CHECKPOINT_COLUMNS = ("model_id", "step", "id", "metrics", "created_at", "updated_at")

TARGETS = {
    "list_ratio": 0.35,
    "list_p99_ms": 15.0,
    "deep_first": 1.2,
    "peak_rss_mb": 150.0,
    "registrations": 1500.0,
    "pg_list_ratio": 0.20,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# Processes ------------------------------------------------------------------------------------

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


def raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
            if httpx.get(f"{base_url}/v1/health", timeout=1).status_code == 200:
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


def start_ours(name: str, database_url: str) -> Server:
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
        env={**os.environ, "CKPT_GC_INTERVAL_SECONDS": "0"},
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


# Building the data ----------------------------------------------------------------------------


@dataclass
class Dataset:
    """A built model: where it lives, its id, a key for it and how many checkpoints it holds."""

    database_url: str
    model_id: str
    key: str
    rows: int
    build_seconds: float
    reused: bool = False


def metrics_json(rng: random.Random, step: int, rows: int) -> str:
    progress = step / max(rows, 1)
    return orjson.dumps(
        {
            "loss": 2.5 * (1 - progress) + rng.random() * 0.1,
            "accuracy": 0.5 + 0.45 * progress + rng.random() * 0.01,
            "reward": rng.gauss(progress, 0.1),
            "kl": rng.random() * 0.05,
            "learning_rate": 3e-4 * (1 - progress),
        }
    ).decode()


def checkpoint_rows(model_id: str, rows: int) -> Iterator[tuple[str, int, str, str, str, str]]:
    rng = random.Random(rows)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for step in range(rows):
        stamp = (start + timedelta(seconds=step)).strftime(TIMESTAMP)
        yield model_id, step, str(uuid.uuid4()), metrics_json(rng, step, rows), stamp, stamp


def sidecar_path(name: str) -> Path:
    return OUT / f"{name}.json"


def build_sqlite(rows: int, rebuild: bool) -> Dataset:
    path = OUT / f"list-{rows}.sqlite"
    sidecar = sidecar_path(f"list-{rows}.sqlite")
    database_url = f"sqlite:///{path}"
    if path.exists() and sidecar.exists() and not rebuild:
        meta = json.loads(sidecar.read_text())
        log(f"reusing {path} (built in {meta['build_seconds']:.1f} s; --rebuild to build again)")
        return Dataset(
            database_url, meta["model_id"], meta["key"], rows, meta["build_seconds"], True
        )

    log(f"building {rows:,} checkpoints on SQLite at {path}")
    began = time.perf_counter()
    building = path.with_name(path.name + ".building")
    for stale in (path, building):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{stale}{suffix}").unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    upgrade(f"sqlite:///{building}")

    db = sqlite3.connect(building, isolation_level=None)
    # Durability is irrelevant while building a benchmark file: no journal, no fsync, a big cache.
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -1000000")
    db.execute("PRAGMA temp_store = MEMORY")
    # Secondary indexes are built once after the load (a sort) instead of row by row (random
    # inserts into a growing b-tree); their DDL comes from the migrated schema itself.
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('checkpoints', 'checkpoint_metrics')"
    ).fetchall()
    for name, _ in indexes:
        db.execute(f"DROP INDEX {name}")

    key, model_id, now = generate_key(), str(uuid.uuid4()), datetime.now(UTC).strftime(TIMESTAMP)
    db.execute("BEGIN")
    db.execute(
        "INSERT INTO api_keys (id, entity, name, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        (str(uuid.uuid4()), "default", "benchmark", hash_key(key), now),
    )
    db.execute(
        "INSERT INTO models (id, entity, project, name, base_model, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (model_id, "default", "benchmarks", f"list-{rows}", "Qwen/Qwen2.5-0.5B-Instruct", now),
    )
    db.executemany(
        f"INSERT INTO checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
        checkpoint_rows(model_id, rows),
    )
    # One row per (checkpoint, metric), taken from the stored JSON so the two always agree.
    db.execute(
        "INSERT INTO checkpoint_metrics (model_id, name, step, value) "
        "SELECT c.model_id, m.key, c.step, m.value FROM checkpoints c, json_each(c.metrics) m "
        "WHERE c.model_id = ?",
        (model_id,),
    )
    for _, sql in indexes:
        db.execute(sql)
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode = WAL")
    db.close()
    building.rename(path)
    seconds = time.perf_counter() - began
    sidecar.write_text(json.dumps({"model_id": model_id, "key": key, "build_seconds": seconds}))
    log(f"built {rows:,} checkpoints ({rows * len(METRIC_NAMES):,} metric rows) in {seconds:.1f} s")
    return Dataset(database_url, model_id, key, rows, seconds)


async def ensure_postgres_database(url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    dsn = postgres_dsn(url)
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        name = make_url(url).database
        admin = await asyncpg.connect(
            postgres_dsn(
                make_url(url).set(database="postgres").render_as_string(hide_password=False)
            )
        )
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    else:
        await conn.close()


async def postgres_model_rows(url: str, model_id: str) -> int | None:
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn(url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM checkpoints WHERE model_id = $1::uuid", model_id
            )
        )
    except (asyncpg.PostgresError, ValueError):
        return None
    finally:
        await conn.close()


async def load_postgres(url: str, rows: int, key: str, model_id: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn(url))
    try:
        now = datetime.now(UTC)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO api_keys (id, entity, name, key_hash, created_at) "
                "VALUES ($1::uuid, 'default', 'benchmark', $2, $3)",
                str(uuid.uuid4()),
                hash_key(key),
                now,
            )
            await conn.execute(
                "INSERT INTO models (id, entity, project, name, base_model, created_at) "
                "VALUES ($1::uuid, 'default', 'benchmarks', $2, 'Qwen/Qwen2.5-0.5B-Instruct', $3)",
                model_id,
                f"list-{rows}",
                now,
            )
            start = datetime(2026, 1, 1, tzinfo=UTC)
            rng = random.Random(rows)
            records = (
                (
                    model_id,
                    step,
                    str(uuid.uuid4()),
                    metrics_json(rng, step, rows),
                    start + timedelta(seconds=step),
                    start + timedelta(seconds=step),
                )
                for step in range(rows)
            )
            await conn.copy_records_to_table(
                "checkpoints", records=records, columns=CHECKPOINT_COLUMNS
            )
            await conn.execute(
                "INSERT INTO checkpoint_metrics (model_id, name, step, value) "
                "SELECT c.model_id, m.key, c.step, m.value::float8 "
                "FROM checkpoints c, jsonb_each_text(c.metrics::jsonb) m WHERE c.model_id = $1::uuid",
                model_id,
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def build_postgres(url: str, rows: int, rebuild: bool) -> Dataset:
    name = re.sub(r"[^A-Za-z0-9]+", "-", url.split("@")[-1]).strip("-")
    sidecar = sidecar_path(f"list-{rows}.pg-{name}")
    asyncio.run(ensure_postgres_database(url))
    if sidecar.exists() and not rebuild:
        meta = json.loads(sidecar.read_text())
        if asyncio.run(postgres_model_rows(url, meta["model_id"])) == rows:
            log(
                f"reusing the PostgreSQL model {meta['model_id']} ({rows:,} rows; --rebuild to build again)"
            )
            return Dataset(url, meta["model_id"], meta["key"], rows, meta["build_seconds"], True)
    log(
        f"building {rows:,} checkpoints on PostgreSQL (the benchmark database's tables are recreated)"
    )
    began = time.perf_counter()
    sidecar.unlink(missing_ok=True)
    downgrade(url, "base")
    upgrade(url)
    key, model_id = generate_key(), str(uuid.uuid4())
    asyncio.run(load_postgres(url, rows, key, model_id))
    seconds = time.perf_counter() - began
    sidecar.write_text(json.dumps({"model_id": model_id, "key": key, "build_seconds": seconds}))
    log(f"built {rows:,} checkpoints on PostgreSQL in {seconds:.1f} s")
    return Dataset(url, model_id, key, rows, seconds)


# Measuring ------------------------------------------------------------------------------------


def list_path(model_id: str) -> str:
    return f"/v1/preview/models/{model_id}/checkpoints"


def sample_cursors(server: Server, data: Dataset) -> tuple[Path, str, str]:
    """A file of real checkpoint ids spread across the model; also the ids of step 0's page and
    of a checkpoint near the end (cursors for the first and deep pages).

    Only steps that leave a full page after them are sampled, so every loaded page has 20 items,
    like the limit's.
    """
    rng = random.Random(7)
    top = max(data.rows - LIST_LIMIT - 1, 1)
    steps = sorted(rng.sample(range(top), min(CURSOR_SAMPLE, top)))
    ids: list[str] = []
    deep_id = ""
    with connect_sync(data) as fetch_ids:
        ids = fetch_ids(steps)
        deep_id = fetch_ids([top - 1])[0]
    path = OUT / f"cursors-{server.name}.txt"
    path.write_text("\n".join(ids) + "\n")
    return path, deep_id, ids[0]


@contextlib.contextmanager
def connect_sync(data: Dataset) -> Iterator[Any]:
    """`ids(steps)`: the checkpoint ids at `steps` of the benchmark model, read from the database."""
    if data.database_url.startswith("sqlite"):
        db = sqlite3.connect(data.database_url.removeprefix("sqlite:///"))
        try:

            def ids(steps: list[int]) -> list[str]:
                found = dict(
                    db.execute(
                        "SELECT step, id FROM checkpoints WHERE model_id = ? AND step IN "
                        "(SELECT value FROM json_each(?))",
                        (data.model_id, json.dumps(steps)),
                    ).fetchall()
                )
                return [found[step] for step in steps]

            yield ids
        finally:
            db.close()
    else:
        import asyncpg

        def ids(steps: list[int]) -> list[str]:
            async def run() -> list[str]:
                conn = await asyncpg.connect(postgres_dsn(data.database_url))
                try:
                    rows = await conn.fetch(
                        "SELECT step, id::text FROM checkpoints WHERE model_id = $1::uuid "
                        "AND step = ANY($2::bigint[])",
                        data.model_id,
                        steps,
                    )
                finally:
                    await conn.close()
                found = {row[0]: row[1] for row in rows}
                return [found[step] for step in steps]

            return asyncio.run(run())

        yield ids


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


class RssSampler(threading.Thread):
    """Samples VmRSS of a process every 50 ms; `peak_kb` is the largest sample, `hwm_kb` VmHWM."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak_kb = 0
        self.hwm_kb = 0
        self.samples = 0
        self.halt = threading.Event()

    def read(self) -> None:
        fields = dict(
            line.split(":", 1)
            for line in self.path.read_text().splitlines()
            if line.startswith("Vm")
        )
        self.peak_kb = max(self.peak_kb, int(fields["VmRSS"].split()[0]))
        self.hwm_kb = int(fields["VmHWM"].split()[0])
        self.samples += 1

    def run(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError):
                self.read()
            self.halt.wait(0.05)


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
    sampler = RssSampler(server.pid)
    sampler.read()
    start_rss = sampler.peak_kb
    sampler.start()
    url = f"{server.base_url}{list_path(data.model_id)}"
    count, pages, last_step, ordered = 0, 0, -1, True
    began = time.perf_counter()
    try:
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
    finally:
        sampler.halt.set()
        sampler.join()
    return Walk(
        seconds,
        count,
        pages,
        sampler.peak_kb / 1024,
        sampler.hwm_kb / 1024,
        start_rss / 1024,
        ordered,
    )


@dataclass
class Registrations:
    per_second: float
    created: int
    other_statuses: dict[int, int]
    listed: int
    seconds: float
    p50_ms: float
    p99_ms: float


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
            "/v1/preview/models",
            json={
                "project": "benchmarks",
                "name": f"registrations-{uuid.uuid4()}",
                "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
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
        reader, writer = await asyncio.open_connection(HOST, int(server.base_url.rsplit(":", 1)[1]))
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
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = client.get(url, params=params).raise_for_status().json()
            count += len(page["data"])
            if not page["has_more"] or not page["data"]:
                return count
            params["after"] = page["data"][-1]["id"]


def registrations(server: Server, data: Dataset, clients: int, duration: float) -> Registrations:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    model_id, statuses, seconds, latencies = asyncio.run(
        register_concurrently(server, data, clients, duration)
    )
    asyncio.set_event_loop_policy(None)
    created = statuses.pop(201, 0)
    listed = count_through_api(server, data, model_id)
    latencies.sort()
    return Registrations(
        created / seconds,
        created,
        statuses,
        listed,
        seconds,
        latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
    )


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


# The run --------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    target: str
    verdict: str  # PASS, FAIL or "" (informational)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def list_rows(
    prefix: str, load: ListLoad, ratio_target: float, p99_target: float | None
) -> list[Row]:
    ratio = load.ratio()
    p99 = max(r.p99_ms for r in load.ours)
    errors = sum(r.errors for r in load.ours + load.limit)
    rows = [
        Row(
            f"{prefix} list req/s, ours (limit=20, random cursors)",
            f"{mean_rps(load.ours):,.0f}",
            "",
            "",
        ),
        Row(
            f"{prefix} list req/s, limit (raw ASGI, same bytes)",
            f"{mean_rps(load.limit):,.0f}",
            "",
            "",
        ),
        Row(
            f"{prefix} list p50 ours / limit",
            f"{statistics.fmean(r.p50_ms for r in load.ours):.2f} / "
            f"{statistics.fmean(r.p50_ms for r in load.limit):.2f} ms",
            "",
            "",
        ),
        Row(
            f"{prefix} list ratio ours/limit",
            f"{ratio:.3f}",
            f">= {ratio_target}",
            verdict(ratio >= ratio_target and errors == 0),
        ),
    ]
    if p99_target is not None:
        rows.append(
            Row(
                f"{prefix} list p99 ours (worst round)",
                f"{p99:.2f} ms",
                f"<= {p99_target:g} ms",
                verdict(p99 <= p99_target),
            )
        )
    if errors:
        rows.append(Row(f"{prefix} list errors (non-2xx + socket)", str(errors), "0", "FAIL"))
    return rows


def print_table(rows: list[Row]) -> None:
    widths = [
        max(len(getattr(row, name)) for row in rows) for name in ("figure", "value", "target")
    ]
    header = Row("figure", "value", "target", "verdict")
    widths = [
        max(w, len(getattr(header, n)))
        for w, n in zip(widths, ("figure", "value", "target"), strict=True)
    ]
    line = "+-" + "-+-".join("-" * w for w in [*widths, 7]) + "-+"
    print(line)
    for index, row in enumerate([header, *rows]):
        print(
            "| "
            + " | ".join(
                [
                    row.figure.ljust(widths[0]),
                    row.value.rjust(widths[1]),
                    row.target.ljust(widths[2]),
                    row.verdict.ljust(7),
                ]
            )
            + " |"
        )
        if index == 0:
            print(line)
    print(line)


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit(
            "wrk is not installed: it is a Debian package, install it with\n"
            "    sudo apt-get update && sudo apt-get install -y wrk\n"
            "(or build it from https://github.com/wg/wrk) and run this benchmark again."
        )


def measure_backend(
    label: str, data: Dataset, args: argparse.Namespace, *, full: bool
) -> list[Row]:
    """Every figure for one backend; `full` adds page depth, the walk and registrations."""
    rows: list[Row] = []
    ours = start_ours(f"ours-{label}", data.database_url)
    log(f"{label}: our server pid {ours.pid} at {ours.base_url}")
    cursors, deep_id, some_id = sample_cursors(ours, data)
    body_path = OUT / f"limit-body-{label}.json"
    body_path.write_bytes(fetch_page(ours, data, some_id))
    limit = start_limit(f"limit-{label}", body_path)
    assert httpx.get(limit.base_url + "/").content == body_path.read_bytes()
    log(
        f"{label}: limit server pid {limit.pid} at {limit.base_url}, "
        f"serving a {body_path.stat().st_size}-byte page"
    )
    try:
        log(
            f"{label}: list load, wrk -t2 -c32 -d{args.duration:g}s, {args.rounds} rounds each, alternating"
        )
        load = load_list(ours, limit, data, cursors, args.duration, args.rounds)
    finally:
        stop(limit.child)
    rows += list_rows(
        label,
        load,
        TARGETS["pg_list_ratio"] if label == "PostgreSQL" else TARGETS["list_ratio"],
        None if label == "PostgreSQL" else TARGETS["list_p99_ms"],
    )
    if full:
        log(f"{label}: first and deep page latency, wrk -t1 -c1 (sequential)")
        p50s = page_latencies(ours, data, deep_id, max(1.0, args.duration / 4))
        first, deep = statistics.median(p50s["first"]), statistics.median(p50s["deep"])
        rows += [
            Row(
                f"{label} p50 first page / page near step {data.rows - LIST_LIMIT - 2:,}",
                f"{first * 1000:.0f} / {deep * 1000:.0f} us",
                "",
                "",
            ),
            Row(
                f"{label} p50 deep/first",
                f"{deep / first:.3f}",
                f"<= {TARGETS['deep_first']}",
                verdict(deep / first <= TARGETS["deep_first"]),
            ),
        ]
        log(f"{label}: full walk at limit={WALK_LIMIT}, asc, sampling the server's RSS every 50 ms")
        walk = full_walk(ours, data)
        log(
            f"  {walk.count:,} checkpoints in {walk.pages:,} pages, {walk.seconds:.1f} s; RSS "
            f"{walk.start_rss_mb:.0f} MB at start, peak {walk.peak_rss_mb:.0f} MB (VmHWM {walk.hwm_mb:.0f} MB)"
        )
        rows += [
            Row(
                f"{label} full walk limit=100 asc ({walk.pages:,} pages)",
                f"{walk.seconds:.1f} s",
                f"count == {data.rows:,}",
                verdict(walk.count == data.rows and walk.ordered),
            ),
            Row(
                f"{label} server peak RSS during the walk (VmHWM)",
                f"{walk.peak_rss_mb:.0f} MB ({walk.hwm_mb:.0f})",
                f"<= {TARGETS['peak_rss_mb']:g} MB",
                verdict(walk.peak_rss_mb <= TARGETS["peak_rss_mb"]),
            ),
        ]
        log(
            f"{label}: registrations, {args.clients} concurrent clients for {args.reg_duration:g} s"
        )
        reg = registrations(ours, data, args.clients, args.reg_duration)
        lost = reg.created - reg.listed
        log(
            f"  {reg.created:,} created (201) in {reg.seconds:.1f} s = {reg.per_second:,.0f}/s, "
            f"p50 {reg.p50_ms:.2f} ms p99 {reg.p99_ms:.2f} ms, other statuses {reg.other_statuses}, "
            f"listed through the API {reg.listed:,}"
        )
        rows += [
            Row(
                f"{label} registrations/s, {args.clients} clients (p99 {reg.p99_ms:.1f} ms)",
                f"{reg.per_second:,.0f}",
                f">= {TARGETS['registrations']:,.0f}",
                verdict(reg.per_second >= TARGETS["registrations"]),
            ),
            Row(
                f"{label} registrations lost (201s {reg.created:,} - listed {reg.listed:,})",
                f"{lost}",
                "0, no other status",
                verdict(lost == 0 and not reg.other_statuses),
            ),
        ]
    stop(ours.child)
    return rows


def measured(label: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """The rows of one backend; a failure becomes a FAIL row, so the table is always printed."""
    try:
        return measure()
    except Exception as exc:
        traceback.print_exc()
        stop_children()
        return [Row(f"{label}: the measurement failed", type(exc).__name__, "no error", "FAIL")]


def postgres_rows(args: argparse.Namespace) -> list[Row]:
    pg = build_postgres(args.postgres_url, args.rows, args.rebuild)
    build = Row(
        f"PostgreSQL build of {args.rows:,} checkpoints" + (" (cached)" if pg.reused else ""),
        f"{pg.build_seconds:.1f} s",
        "",
        "",
    )
    return [build, *measure_backend("PostgreSQL", pg, args, full=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres-url", help="a database this benchmark may recreate the tables of"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk list run")
    parser.add_argument("--rounds", type=int, default=2, help="list runs per server, alternating")
    parser.add_argument("--clients", type=int, default=16, help="concurrent registering clients")
    parser.add_argument("--reg-duration", type=float, default=5.0)
    parser.add_argument("--rebuild", action="store_true", help="build the data even if cached")
    args = parser.parse_args()
    args.rounds = max(args.rounds, 2)
    require_wrk()
    OUT.mkdir(parents=True, exist_ok=True)
    # SIGINT explicitly too: a shell's background job starts with SIGINT ignored, and Python then
    # installs no handler of its own, so Ctrl-C / kill -INT would leave the servers running.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_keyboard_interrupt)
    rows: list[Row] = []
    try:
        data = build_sqlite(args.rows, args.rebuild)
        rows.append(
            Row(
                f"SQLite build of {args.rows:,} checkpoints" + (" (cached)" if data.reused else ""),
                f"{data.build_seconds:.1f} s",
                "< 60 s",
                verdict(data.build_seconds < 60),
            )
        )
        rows += measured("SQLite", lambda: measure_backend("SQLite", data, args, full=True))
        if args.postgres_url:
            rows += measured("PostgreSQL", lambda: postgres_rows(args))
        else:
            rows.append(
                Row(
                    "PostgreSQL list ratio ours/limit", "not run", ">= 0.2", "(give --postgres-url)"
                )
            )
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        stop_children()
        raise SystemExit(130) from None
    finally:
        stop_children()
    print()
    print(
        f"list_endpoint benchmark: {args.rows:,} checkpoints, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, wrk -t2 -c32 -d{args.duration:g}s x {args.rounds} rounds"
    )
    print_table(rows)
    failed = [row.figure for row in rows if row.verdict == "FAIL"]
    print(
        "ALL TARGETS MET" if not failed else f"{len(failed)} TARGET(S) MISSED: " + "; ".join(failed)
    )


if __name__ == "__main__":
    main()
