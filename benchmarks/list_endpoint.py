"""Benchmark the list endpoint against its limit, at 1,000,000 checkpoints, in one run.

    .venv/bin/python benchmarks/list_endpoint.py [--rows 1000000] [--postgres-url URL] [--duration 10]
    .venv/bin/python benchmarks/list_endpoint.py --metrics-cost [--rows 100000] [--duration 5]

Builds (or reuses, from benchmarks/out/) a model with `--rows` checkpoints, serves it with
`ckpt serve`, serves a raw ASGI app returning the same page bytes with the same uvicorn options (the
limit), loads both alternately with wrk, and prints a table of every figure against its target. What
each figure means and the last results: docs/performance.md. Needs `wrk` (apt-get install -y wrk).
`--metrics-cost` instead serves the same SQLite data twice, with metrics on and off, loads both
alternately and prints the on/off ratio (README "Operating it" gives the figure).
Always exits 0 once it has run: it is a benchmark, not a test. Its parts: _data.py builds the data,
_servers.py starts and stops the processes, _measure.py takes each measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from _common import OUT, log
from _data import Dataset, build_postgres, build_sqlite
from _measure import (
    LIST_LIMIT,
    MIB,
    WAL_SAMPLE_SECONDS,
    WAL_SETTLE_SECONDS,
    WALK_LIMIT,
    ListLoad,
    Registrations,
    fetch_page,
    full_walk,
    load_list,
    mean_rps,
    page_latencies,
    registrations,
    sample_cursors,
)
from _servers import start_limit, start_ours, stop, stop_children

TARGETS = {
    "list_ratio": 0.35,
    "list_p99_ms": 15.0,
    "deep_first": 1.2,
    "peak_rss_mb": 150.0,
    "registrations": 1500.0,
    # The writer resets the WAL once it passes its limit (64 MiB), after the commit that crossed it:
    # the peak may pass the limit by one commit group (at most 64 writes of a few pages each).
    "wal_peak_mib": 80.0,
    "pg_list_ratio": 0.20,
}


def raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
            + (f", the WAL's size sampled every {WAL_SAMPLE_SECONDS:g} s" if data.is_sqlite else "")
        )
        rows += registration_rows(label, registrations(ours, data, args.clients, args.reg_duration))
    stop(ours.child)
    return rows


def registration_rows(label: str, reg: Registrations) -> list[Row]:
    lost = reg.created - reg.listed
    log(
        f"  {reg.created:,} created (201) in {reg.seconds:.1f} s = {reg.per_second:,.0f}/s, "
        f"p50 {reg.p50_ms:.2f} ms p99 {reg.p99_ms:.2f} ms, other statuses {reg.other_statuses}, "
        f"listed through the API {reg.listed:,}"
    )
    rows = [
        Row(
            f"{label} registrations/s, {reg.clients} clients for {reg.seconds:.0f} s "
            f"(p99 {reg.p99_ms:.1f} ms)",
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
    if reg.wal is not None:
        wal = reg.wal
        log(
            f"  WAL {wal.start / MIB:.1f} MiB before the load, peak {wal.peak / MIB:.1f} MiB "
            f"({wal.samples} samples), {wal.end / MIB:.1f} MiB at its end, "
            f"{wal.after / MIB:.1f} MiB {WAL_SETTLE_SECONDS:g} s later"
        )
        rows += [
            Row(
                f"{label} WAL peak during the registrations",
                f"{wal.peak / MIB:,.1f} MiB",
                f"<= {TARGETS['wal_peak_mib']:g} MiB",
                verdict(wal.peak <= TARGETS["wal_peak_mib"] * MIB),
            ),
            Row(f"{label} WAL as the load stopped", f"{wal.end / MIB:,.1f} MiB", "", ""),
            Row(
                f"{label} WAL {WAL_SETTLE_SECONDS:g} s after the load",
                f"{wal.after / MIB:,.1f} MiB",
                "",
                "",
            ),
        ]
    return rows


def measured(label: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """The rows of one backend; a failure becomes a FAIL row, so the table is always printed."""
    try:
        return measure()
    except Exception as exc:
        traceback.print_exc()
        stop_children()
        return [Row(f"{label}: the measurement failed", type(exc).__name__, "no error", "FAIL")]


def metrics_cost(args: argparse.Namespace) -> None:
    """The list endpoint with metrics on against the same server with them off, in one run."""
    data = build_sqlite(args.rows, args.rebuild)
    off = start_ours("ours-metrics-off", data.database_url, {"CKPT_METRICS": "off"})
    on = start_ours("ours-metrics-on", data.database_url, {"CKPT_METRICS": "on"})
    cursors, _, _ = sample_cursors(off, data)
    log(f"list load, wrk -t2 -c32 -d{args.duration:g}s, {args.rounds} rounds each, alternating")
    load = load_list(on, off, data, cursors, args.duration, args.rounds)
    errors = sum(r.errors for r in load.ours + load.limit)
    print()
    print(
        f"list_endpoint --metrics-cost: {args.rows:,} checkpoints, {os.cpu_count()} CPUs, "
        f"wrk -t2 -c32 -d{args.duration:g}s x {args.rounds} rounds, errors {errors}"
    )
    print(f"metrics off: {mean_rps(load.limit):,.0f} req/s")
    print(f"metrics on:  {mean_rps(load.ours):,.0f} req/s")
    print(f"on/off ratio: {load.ratio():.3f}")


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
    parser.add_argument(
        "--metrics-cost", action="store_true", help="only the list with metrics on against off"
    )
    args = parser.parse_args()
    args.rounds = max(args.rounds, 2)
    require_wrk()
    OUT.mkdir(parents=True, exist_ok=True)
    # SIGINT explicitly too: a shell's background job starts with SIGINT ignored, and Python then
    # installs no handler of its own, so Ctrl-C / kill -INT would leave the servers running.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_keyboard_interrupt)
    if args.metrics_cost:
        try:
            metrics_cost(args)
        finally:
            stop_children()
        return
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
