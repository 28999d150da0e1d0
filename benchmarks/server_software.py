"""Which server software `ckpt serve` should run on: our app's list endpoint and registrations under
uvicorn and granian, and whether granian does what `ckpt serve` relies on.

    .venv/bin/python benchmarks/server_software.py [--duration 5] [--rounds 3]

Needs the list benchmark's 20,000-row data (`benchmarks/list_endpoint.py --rows 20000 --duration 2`
builds it once) and wrk. The app factory `ckpt_registry.server.app:create_app_from_env` runs on a
copy of that database under each server (one worker, pinned to CPU 0) with wrk or the registration
client on CPU 1; the servers alternate, rounds interleaved. Then the behaviour checks run on the bare
app of `transfer_app.py`: lifespan startup and shutdown, --workers 2, a request body streamed,
client disconnects seen by the app, HTTP/1.1 keep-alive. Always exits 0 once it has run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from _common import HERE, HOST, OUT, log
from _data import Dataset
from _measure import list_path, registrations, sample_cursors
from _servers import Server, WrkResult, run_wrk, stop, stop_children
from _transfer import (
    GRANIAN,
    MIB,
    UVICORN_HTTPTOOLS,
    Software,
    process_tree,
    serve,
    source_file,
    tree_rss_bytes,
)

ROWS = 20_000
# uvicorn with httptools and uvloop is what `ckpt serve` runs today (uvicorn's "auto" picks both).
CANDIDATES = (UVICORN_HTTPTOOLS, GRANIAN)
SERVER_CPU, CLIENT_CPU = "0", "1"


def raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# Our app under each server ---------------------------------------------------------------------


def dataset() -> Dataset:
    """A private copy of the list benchmark's database (registrations add models to it)."""
    built = OUT / f"list-{ROWS}.sqlite"
    sidecar = OUT / f"list-{ROWS}.sqlite.json"
    if not built.exists() or not sidecar.exists():
        raise SystemExit(
            f"no {built.name}: run `.venv/bin/python benchmarks/list_endpoint.py --rows {ROWS} "
            "--duration 2` once to build it"
        )
    meta = json.loads(sidecar.read_text())
    copy = OUT / "server-software.sqlite"
    for stale in OUT.glob("server-software.sqlite*"):
        stale.unlink()
    with sqlite3.connect(built) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    return Dataset(f"sqlite:///{copy}", meta["model_id"], meta["key"], ROWS, 0.0, reused=True)


def serve_ours(software: Software, data: Dataset) -> Server:
    name = software.name.replace(" ", "-")
    return serve(
        software,
        "ckpt_registry.server.app:create_app_from_env",
        factory=True,
        env={"CKPT_DATABASE_URL": data.database_url, "CKPT_GC_INTERVAL_SECONDS": "0"},
        prefix=["taskset", "-c", SERVER_CPU],
        log_name=f"server-software-{name}",
    )


def list_load(
    servers: dict[Software, Server], data: Dataset, duration: float, rounds: int
) -> dict[Software, list[WrkResult]]:
    cursors, _, _ = sample_cursors(next(iter(servers.values())), data)
    env = {
        "CKPT_BENCH_PATH": list_path(data.model_id),
        "CKPT_BENCH_CURSORS": str(cursors),
        "CKPT_BENCH_KEY": data.key,
    }

    def wrk(server: Server, seconds: float) -> WrkResult:
        # One wrk thread on the other CPU: the server has CPU 0 to itself.
        return run_wrk(
            server.base_url + "/",
            duration=seconds,
            threads=1,
            connections=32,
            script=HERE / "wrk" / "list.lua",
            env=env,
            prefix=["taskset", "-c", CLIENT_CPU],
        )

    for server in servers.values():
        wrk(server, 2)  # warm-up
    results: dict[Software, list[WrkResult]] = {software: [] for software in servers}
    for round_number in range(1, rounds + 1):
        for software, server in servers.items():
            result = wrk(server, duration)
            results[software].append(result)
            log(
                f"  list round {round_number} {software.name:<18} {result.requests_per_second:>8,.0f}"
                f" req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  errors {result.errors}"
            )
    return results


def pinned_registrations(server: Server, data: Dataset, duration: float) -> Any:
    """16 keep-alive clients registering for `duration`, from CPU 1 (this process, for the while)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    try:
        return registrations(server, data, clients=16, duration=duration)
    finally:
        os.sched_setaffinity(0, before)


# Behaviour checks, on the bare app ------------------------------------------------------------


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(events: Path, event: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in read_events(events) if e["event"] == event]
        if found:
            return found
        time.sleep(0.05)
    return []


def raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.sendall(head.encode())
    return sock


def behaviour(software: Software) -> dict[str, str]:
    """What `ckpt serve` relies on, checked on the bare app under `software`."""
    source = source_file(64).path
    sink = OUT / "server-software-sink"
    sink.mkdir(exist_ok=True)
    name = software.name.replace(" ", "-")
    events = OUT / f"server-software-events-{name}.jsonl"
    events.unlink(missing_ok=True)
    env = {
        "CKPT_BENCH_TRANSFER_SOURCE": str(source),
        "CKPT_BENCH_TRANSFER_SINK": str(sink),
        "CKPT_BENCH_EVENTS": str(events),
    }
    found: dict[str, str] = {}
    server = serve(software, "transfer_app:app", env=env, log_name=f"server-software-bare-{name}")
    try:
        found["lifespan startup"] = "yes" if wait_for(events, "startup") else "NO"

        # Keep-alive: three requests on one client; the app sees the client's port.
        with httpx.Client(base_url=server.base_url) as client:
            ports = {tuple(client.get("/whoami").json()["client"])[1] for _ in range(3)}
        found["HTTP/1.1 keep-alive"] = "yes" if len(ports) == 1 else f"NO ({len(ports)} conns)"

        # A 256 MiB body, from a generator: streamed if the app gets it in pieces while the
        # server's RSS stays far below the body's size.
        def body() -> Iterator[bytes]:
            chunk = os.urandom(MIB)
            for _ in range(256):
                yield chunk

        idle = tree_rss_bytes(server.pid)
        peak = [idle]
        answer = httpx.put(
            f"{server.base_url}/upload/streamed.bin",
            content=sampled(body(), server.pid, peak),
            timeout=60,
        ).json()
        found["request body streamed"] = (
            f"{'yes' if answer['chunks'] > 1 and peak[0] - idle < 64 * MIB else 'NO'}: "
            f"{answer['chunks']:,} chunks of <= {answer['biggest_chunk'] // 1024} KiB, "
            f"RSS +{(peak[0] - idle) // MIB} MiB for 256 MiB"
        )
        (sink / "streamed.bin").unlink(missing_ok=True)

        # Disconnects: an upload cut after 1 MiB of 64, a download read for 1 MiB of 64.
        sock = raw_request(
            server.port,
            f"PUT /upload/cut.bin HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {64 * MIB}\r\n\r\n",
        )
        sock.sendall(os.urandom(MIB))
        time.sleep(0.2)
        sock.close()
        seen = wait_for(events, "upload-disconnect")
        found["upload cut: app sees disconnect"] = (
            f"yes (after {seen[0]['received'] // 1024:,} KiB)" if seen else "NO"
        )
        sock = raw_request(server.port, f"GET /download HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
        received = 0
        while received < MIB:
            received += len(sock.recv(65536))
        sock.close()
        seen = wait_for(events, "download-disconnect")
        if seen:
            verdict = f"yes ({seen[0]['seen_by']}, after {seen[0]['sent'] // MIB} MiB)"
        elif ran := [e for e in read_events(events) if e["event"] == "download-complete"]:
            # Every send succeeded on the closed connection and receive() never said so.
            verdict = f"NO: the app sent all {ran[0]['sent'] // MIB} MiB into the void"
        else:
            verdict = "NO"
        found["download cut: app sees disconnect"] = verdict
    finally:
        stop(server.child)
    found["lifespan shutdown (SIGTERM)"] = "yes" if wait_for(events, "shutdown", 1) else "NO"

    # Two workers: both start (each runs the lifespan) and both answer new connections.
    events.unlink(missing_ok=True)
    server = serve(
        software, "transfer_app:app", env=env, workers=2, log_name=f"server-software-2-{name}"
    )
    try:
        deadline = time.monotonic() + 10
        while len(wait_for(events, "startup")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        started = {e["pid"] for e in wait_for(events, "startup")}
        answered = {httpx.get(f"{server.base_url}/whoami").json()["pid"] for _ in range(40)}
    finally:
        stop(server.child)
    shut = {e["pid"] for e in read_events(events) if e["event"] == "shutdown"}
    found["--workers 2"] = (
        f"{'yes' if len(started) == 2 and len(answered) == 2 else 'NO'}: {len(started)} started, "
        f"{len(answered)} answered 40 new connections, {len(shut)} ran shutdown"
    )
    return found


def sampled(chunks: Iterator[bytes], pid: int, peak: list[int]) -> Iterator[bytes]:
    """`chunks`, with the server's RSS read before each one is sent."""
    for chunk in chunks:
        peak[0] = max(peak[0], tree_rss_bytes(pid))
        yield chunk


# The run --------------------------------------------------------------------------------------


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule]
    for index, row in enumerate(rows):
        lines.append(
            "|" + "|".join(f" {cell:<{w}} " for cell, w in zip(row, widths, strict=True)) + "|"
        )
        if index == 0:
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reg-duration", type=float, default=5.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    rows: list[tuple[str, ...]] = [("figure", *(s.name for s in CANDIDATES))]
    try:
        data = dataset()
        servers = {software: serve_ours(software, data) for software in CANDIDATES}
        log(f"list load: wrk -t1 -c32 -d{args.duration:g}s, {args.rounds} rounds, alternating")
        loads = list_load(servers, data, args.duration, args.rounds)
        rows.append(
            (
                "list req/s, mean (min-max)",
                *(
                    f"{statistics.fmean(r.requests_per_second for r in loads[s]):,.0f} "
                    f"({min(r.requests_per_second for r in loads[s]):,.0f}-"
                    f"{max(r.requests_per_second for r in loads[s]):,.0f})"
                    for s in CANDIDATES
                ),
            )
        )
        rows.append(
            (
                "list p50 / worst p99",
                *(
                    f"{statistics.fmean(r.p50_ms for r in loads[s]):.2f} / "
                    f"{max(r.p99_ms for r in loads[s]):.2f} ms"
                    for s in CANDIDATES
                ),
            )
        )
        rows.append(("list errors", *(str(sum(r.errors for r in loads[s])) for s in CANDIDATES)))
        made = {}
        for software in CANDIDATES:
            log(f"registrations under {software.name}")
            made[software] = pinned_registrations(servers[software], data, args.reg_duration)
        rows.append(
            (
                "registrations/s, 16 clients (p99)",
                *(f"{made[s].per_second:,.0f} ({made[s].p99_ms:.1f} ms)" for s in CANDIDATES),
            )
        )
        rows.append(
            (
                "registrations lost / other statuses",
                *(
                    f"{made[s].created - made[s].listed} / {made[s].other_statuses or 'none'}"
                    for s in CANDIDATES
                ),
            )
        )
        rows.append(
            (
                "server peak RSS (VmHWM, tree)",
                *(f"{peak_hwm(servers[s].pid) // 1000} MB" for s in CANDIDATES),
            )
        )
        for server in servers.values():
            stop(server.child)
        checks = {software: behaviour(software) for software in CANDIDATES}
        for check in checks[CANDIDATES[0]]:
            rows.append((check, *(checks[s].get(check, "-") for s in CANDIDATES)))
    finally:
        stop_children()
    print()
    print(table(rows))


def peak_hwm(pid: int) -> int:
    """The summed VmHWM (kB) of the server's process tree."""
    total = 0
    for each in process_tree(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total


if __name__ == "__main__":
    main()
