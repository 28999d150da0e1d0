"""A bounded soak of `ckpt serve`: mixed reads and writes at a fixed concurrency, on SQLite and on
PostgreSQL, reporting requests, errors, latency and the server's memory.

    .venv/bin/python benchmarks/soak.py [--seconds 60] [--connections 64] [--warmup 10]
        [--databases sqlite,postgresql] [--postgres-url URL]

Each database gets a fresh one (PostgreSQL: a database created from `--postgres-url`, default
CKPT_TEST_POSTGRES_URL, and dropped after), a key, 8 models of 200 checkpoints, and one `ckpt serve`
worker. `--connections` clients then loop for `--warmup` seconds and for `--seconds` more, each
request one of: list a page (40%), get a checkpoint (15%), best by a metric (15%), register a new
step (20%), patch a checkpoint's metrics (10%). It prints, per database, the requests and errors
(any answer but the expected 200/201, or a transport error), p50/p99 latency and the server's RSS
after the warm-up against at the end. Exits 1 when there was any error or the RSS grew more than 10%
(the issue's bar), so a short run (`--seconds 10`) can serve as a check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy.engine import make_url

from _common import OUT, log
from _measure import status_kb
from _servers import Server, start_ours, stop, stop_children
from ckpt_registry.contract import API_PREFIX
from ckpt_registry.keys import generate_key, hash_key
from ckpt_registry.storage import open_storage
from ckpt_registry.storage.migrate import upgrade
from ckpt_registry.storage.urls import postgres_dsn

MODELS = 8
CHECKPOINTS = 200  # per model, before the soak; --checkpoints
RSS_GROWTH_LIMIT = 0.10  # --max-rss-growth
# Operation -> share of requests.
MIX = {"list": 40, "get": 15, "best": 15, "register": 20, "patch": 10}
METRICS = ("loss", "accuracy", "reward")


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, operation: str, seconds: float) -> None:
        self.latencies.setdefault(operation, []).append(seconds)

    @property
    def requests(self) -> int:
        return sum(len(values) for values in self.latencies.values()) + self.error_count

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile(self, share: float) -> float:
        every = sorted(value for values in self.latencies.values() for value in values)
        return every[min(len(every) - 1, int(len(every) * share))] if every else 0.0


@dataclass
class Result:
    database: str
    seconds: float
    tally: Tally
    rss_after_warmup_kb: int
    rss_at_end_kb: int
    max_rss_growth: float

    @property
    def rss_growth(self) -> float:
        return self.rss_at_end_kb / self.rss_after_warmup_kb - 1

    @property
    def ok(self) -> bool:
        return self.tally.error_count == 0 and self.rss_growth <= self.max_rss_growth


# The data -------------------------------------------------------------------------------------


async def seed(database_url: str, checkpoints: int) -> tuple[str, list[str], list[list[str]]]:
    """A key, its models and their checkpoints' ids (registered through the storage layer)."""
    key = generate_key()
    storage = open_storage(database_url)
    await storage.open()
    try:
        await storage.create_key("default", "soak", hash_key(key))
        model_ids, checkpoint_ids = [], []
        rng = random.Random(7)
        for index in range(MODELS):
            model, _ = await storage.create_model(
                "default", "soak", f"model-{index}", "base", return_existing=False
            )
            ids = []
            for step in range(checkpoints):
                metrics = {name: rng.random() for name in METRICS}
                checkpoint, _ = await storage.register_checkpoint(
                    "default", model.id, step, metrics
                )
                ids.append(checkpoint.id)
            model_ids.append(model.id)
            checkpoint_ids.append(ids)
    finally:
        await storage.close()
    return key, model_ids, checkpoint_ids


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server `admin_url` names, dropped afterwards."""
    name = f"ckpt_soak_{uuid.uuid4().hex[:12]}"

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(postgres_dsn(admin_url))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# The load -------------------------------------------------------------------------------------


class Load:
    """`connections` clients looping over the mix until told to stop, into the current tally."""

    def __init__(
        self, base_url: str, key: str, model_ids: list[str], checkpoint_ids: list[list[str]]
    ) -> None:
        steps = len(checkpoint_ids[0])
        self.base_url = base_url + API_PREFIX
        self.key = key
        self.model_ids = model_ids
        self.checkpoint_ids = checkpoint_ids
        self.tally = Tally()
        self.steps = itertools.count(steps)
        self.operations = random.Random(1).sample(
            [operation for operation, share in MIX.items() for _ in range(share)], 100
        )

    async def run(self, connections: int, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.key}"},
            limits=limits,
            timeout=30,
        ) as client:
            await asyncio.gather(
                *(self.client(client, random.Random(seed), stop) for seed in range(connections))
            )

    async def client(
        self, client: httpx.AsyncClient, rng: random.Random, stop: asyncio.Event
    ) -> None:
        for operation in itertools.cycle(self.operations[rng.randrange(100) :] + self.operations):
            if stop.is_set():
                return
            model = rng.randrange(MODELS)
            model_id = self.model_ids[model]
            checkpoints = f"/preview/models/{model_id}/checkpoints"
            checkpoint = f"{checkpoints}/{rng.choice(self.checkpoint_ids[model])}"
            started = time.perf_counter()
            try:
                if operation == "list":
                    params = {
                        "limit": rng.choice((1, 20, 100)),
                        "order": rng.choice(("asc", "desc")),
                    }
                    response = await client.get(checkpoints, params=params)
                elif operation == "get":
                    response = await client.get(checkpoint)
                elif operation == "best":
                    params = {"metric": rng.choice(METRICS), "mode": rng.choice(("max", "min"))}
                    response = await client.get(f"{checkpoints}/best", params=params)
                elif operation == "register":
                    body = {"step": next(self.steps), "metrics": {"loss": rng.random()}}
                    response = await client.post(checkpoints, json=body)
                else:
                    body = {"metrics": {f"eval_{rng.randrange(20)}": rng.random()}}
                    response = await client.patch(checkpoint, json=body)
            except httpx.HTTPError as exc:
                self.tally.errors[f"{operation}: {type(exc).__name__}"] += 1
                continue
            if response.status_code in (200, 201):
                self.tally.add(operation, time.perf_counter() - started)
            else:
                self.tally.errors[f"{operation}: {response.status_code}"] += 1


def soak(name: str, database_url: str, args: argparse.Namespace) -> Result:
    seconds, warmup, connections = args.seconds, args.warmup, args.connections
    upgrade(database_url)
    key, model_ids, checkpoint_ids = asyncio.run(seed(database_url, args.checkpoints))
    server = start_ours(f"soak-{name}", database_url)
    try:
        return asyncio.run(
            drive(
                name,
                server,
                key,
                model_ids,
                checkpoint_ids,
                seconds,
                warmup,
                connections,
                args.max_rss_growth,
            )
        )
    finally:
        stop(server.child)


async def drive(
    name: str,
    server: Server,
    key: str,
    model_ids: list[str],
    checkpoint_ids: list[list[str]],
    seconds: float,
    warmup: float,
    connections: int,
    max_rss_growth: float,
) -> Result:
    load = Load(server.base_url, key, model_ids, checkpoint_ids)
    stopped = asyncio.Event()
    running = asyncio.create_task(load.run(connections, stopped))
    await asyncio.sleep(warmup)
    rss_after_warmup = status_kb(server.pid, "VmRSS")
    load.tally = Tally()  # the soak's figures start after the warm-up
    log(f"{name}: warmed up for {warmup:g} s; RSS {rss_after_warmup / 1024:.1f} MiB")
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    tally = load.tally
    elapsed = time.perf_counter() - started
    rss_at_end = status_kb(server.pid, "VmRSS")
    stopped.set()
    await running
    return Result(name, elapsed, tally, rss_after_warmup, rss_at_end, max_rss_growth)


def report(result: Result) -> None:
    tally = result.tally
    print(
        f"{result.database:<10} requests {tally.requests:>7} ({tally.requests / result.seconds:,.0f}/s)"
        f"  errors {tally.error_count}"
        f"  p50 {tally.percentile(0.50) * 1000:.1f} ms  p99 {tally.percentile(0.99) * 1000:.1f} ms"
        f"  RSS {result.rss_after_warmup_kb / 1024:.1f} -> {result.rss_at_end_kb / 1024:.1f} MiB"
        f" ({result.rss_growth:+.1%})  {'ok' if result.ok else 'FAILED'}"
    )
    for operation, values in sorted(tally.latencies.items()):
        values.sort()
        print(
            f"    {operation:<9} {len(values):>7}  p50 {statistics.median(values) * 1000:.1f} ms"
            f"  p99 {values[int(len(values) * 0.99)] * 1000:.1f} ms"
        )
    for error, count in tally.errors.most_common():
        print(f"    error {error}: {count}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--checkpoints", type=int, default=CHECKPOINTS, help="per model, seeded")
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=RSS_GROWTH_LIMIT,
        help="the RSS growth from the warm-up's end that fails the run (0.1: 10%%)",
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CKPT_TEST_POSTGRES_URL"),
        help="a PostgreSQL server to create the soak's database on (default CKPT_TEST_POSTGRES_URL)",
    )
    args = parser.parse_args()
    databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    OUT.mkdir(exist_ok=True)
    log(
        f"soak: {args.connections} connections, {args.warmup:g} s warm-up then {args.seconds:g} s, "
        f"mix {MIX}"
    )
    results = []
    try:
        for name in databases:
            if name == "sqlite":
                folder = OUT / "soak-sqlite"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                url = f"sqlite:///{folder / 'ckpt.db'}"
                results.append(soak(name, url, args))
            elif name == "postgresql":
                if not args.postgres_url:
                    raise SystemExit("PostgreSQL needs --postgres-url or CKPT_TEST_POSTGRES_URL")
                with postgres_database(args.postgres_url) as url:
                    results.append(soak(name, url, args))
            else:
                raise SystemExit(f"unknown database {name!r}: sqlite or postgresql")
    finally:
        stop_children()
    for result in results:
        report(result)
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
