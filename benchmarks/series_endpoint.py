"""What the metric series endpoint costs on a model with 100,000 checkpoints (the dashboard's chart
on open), beside a first list page in the same run: median and p95 per request, and the ratio.

    .venv/bin/python benchmarks/series_endpoint.py [--rows 100000] [--requests 30]
        [--postgres-url postgresql://.../ckpt_bench]

The data is the list benchmark's (benchmarks/_data.py, cached under benchmarks/out/).
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from _common import OUT, log
from _data import Dataset, build_postgres, build_sqlite
from _servers import start_ours, stop, stop_children
from ckpt_registry.contract import CHECKPOINTS_PATH, SERIES_PATH


def timings(
    client: httpx.Client, path: str, params: dict[str, object], requests: int
) -> list[float]:
    client.get(path, params=params).raise_for_status()  # warm the caches once
    spent = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(path, params=params)
        spent.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return spent


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values):7.1f} ms  p95 {p95:7.1f} ms"


def measure(label: str, data: Dataset, requests: int) -> None:
    server = start_ours(f"series-{label}", data.database_url)
    try:
        headers = {"Authorization": f"Bearer {data.key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
            series_path = SERIES_PATH.format(model_id=data.model_id)
            list_path = CHECKPOINTS_PATH.format(model_id=data.model_id)
            body = client.get(series_path, params={"metric": "loss"}).json()
            log(f"{label}: {body['count']:,} checkpoints -> {len(body['steps'])} points")
            series = timings(client, series_path, {"metric": "loss"}, requests)
            zoomed = timings(
                client,
                series_path,
                {"metric": "loss", "step_min": data.rows // 2, "step_max": data.rows // 2 + 9999},
                requests,
            )
            page = timings(client, list_path, {"limit": 20, "order": "desc"}, requests)
        print(f"{label:10s} series, all steps     {summary(series)}")
        print(f"{label:10s} series, 10,000 steps  {summary(zoomed)}")
        print(f"{label:10s} list page (20)        {summary(page)}")
        ratio = statistics.median(series) / statistics.median(page)
        print(f"{label:10s} series / list page    {ratio:7.1f}x")
    finally:
        stop(server.child)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--rebuild", action="store_true", help="build the data even if cached")
    parser.add_argument("--postgres-url", help="also measure on this PostgreSQL database")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        measure("sqlite", build_sqlite(args.rows, args.rebuild), args.requests)
        if args.postgres_url:
            measure(
                "postgresql",
                build_postgres(args.postgres_url, args.rows, args.rebuild),
                args.requests,
            )
    finally:
        stop_children()


if __name__ == "__main__":
    main()
