"""Benchmark moving a 1 GiB file up and down through `ckpt serve` against bare ASGI apps and `cp`.

    .venv/bin/python benchmarks/transfer.py [--size-mib 1024] [--rounds 3] [--client curl|httpx]
                                            [--no-mlflow]

In one run: `cp` (+ `sync`) of the file; a bare ASGI upload sink (sha256 + write + fsync) and a bare
download (4 MiB chunks with Content-Length), `transfer_app.py`, each served by uvicorn (h11),
uvicorn (httptools) and granian; `ckpt serve` (local store) through the files route
(shared/CONTRACT.md section 6); and MLflow 3's artifact proxy, the self-hosted peer, installed on
demand into its own venv in benchmarks/out/ (`_mlflow.py`; skipped with --no-mlflow or, said why,
when it cannot be installed). Every transfer is timed wall to wall over 127.0.0.1
with the server's CPU seconds and peak RSS (its whole process tree) beside it; the rounds alternate
the servers. A table of MB/s (10^6 bytes/s, median of the rounds) and the ratios follows; the
figures and what they mean: docs/performance.md. Always exits 0 once it has run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx

import _mlflow
from _common import OUT, log
from _servers import VENV_BIN, Server, start_ours, stop, stop_children
from _transfer import (
    GRANIAN,
    MB,
    SOFTWARE,
    UVICORN_HTTPTOOLS,
    Software,
    Transfer,
    copy,
    download,
    serve,
    source_file,
    upload,
)
from ckpt_registry.contract import CHECKPOINTS_PATH, MODELS_PATH

# The targets: as fractions of the best bare app, and as multiples of MLflow's artifact proxy
# measured in the same run.
TARGET_UP = 0.8
TARGET_DOWN = 0.8
TARGET_RSS_MB = 120
TARGET_VS_MLFLOW_UP, TARGET_VS_MLFLOW_DOWN = 1.5, 4.0


def raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# The `ckpt serve` rows: the hook for the files route -------------------------------------------
#
# Everything the benchmark knows about the files route is in this section. It probes the route with
# a request, so the rows fill in by themselves once the route is served; whoever builds the route
# checks `files_url` and the store setting against it.

NOT_AVAILABLE = "not available: the files route does not exist yet"

# Settings `ckpt serve` needs for its local store: name -> value, where "{store}" in a value becomes
# a new, empty folder in benchmarks/out/.
STORE_ENV: dict[str, str] = {"CKPT_BLOB_URL": "{store}"}


@dataclass
class Checkpoint:
    base_url: str
    key: str
    model_id: str
    checkpoint_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def files_url(self, path: str) -> str:
        checkpoints = CHECKPOINTS_PATH.format(model_id=self.model_id)
        return f"{self.base_url}{checkpoints}/{self.checkpoint_id}/files/{path}"


def create_checkpoint(base_url: str, key: str) -> Checkpoint:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        model = client.post(
            MODELS_PATH,
            json={"project": "transfer", "name": f"transfer-{uuid.uuid4()}", "base_model": "none"},
        )
        model_id = model.raise_for_status().json()["id"]
        checkpoint = client.post(CHECKPOINTS_PATH.format(model_id=model_id), json={"step": 0})
        return Checkpoint(base_url, key, model_id, checkpoint.raise_for_status().json()["id"])


def files_route_exists(checkpoint: Checkpoint) -> bool:
    """PUT a 5-byte file to a real checkpoint: 200/201 when the route is served; 404 (no route)
    or 405 (a route for other methods) when it is not. Anything else is a failure to look at."""
    response = httpx.put(
        checkpoint.files_url("probe.txt"), content=b"probe", headers=checkpoint.headers, timeout=30
    )
    if response.status_code in (200, 201):
        return True
    if response.status_code == 405 or (
        response.status_code == 404 and response.json() == {"detail": "Not Found"}
    ):
        return False
    raise RuntimeError(f"the files route probe answered {response.status_code}: {response.text}")


def ckpt_upload(
    checkpoint: Checkpoint, client: str, source: Path, sha256: str, path: str, pid: int
) -> Transfer:
    return upload(client, checkpoint.files_url(path), source, sha256, pid, checkpoint.headers)


def ckpt_download(checkpoint: Checkpoint, client: str, path: str, size: int, pid: int) -> Transfer:
    return download(client, checkpoint.files_url(path), size, pid, checkpoint.headers)


def start_ckpt_servers() -> tuple[dict[str, Server], str]:
    """On a new SQLite database: `ckpt serve` (one worker, as `list_endpoint.py` starts it), and the
    same app factory under granian (what `ckpt serve` would run if it switched); and a key made
    with `ckpt keys create`."""
    database = OUT / "transfer.sqlite"
    for stale in OUT.glob("transfer.sqlite*"):
        stale.unlink()
    store = OUT / "transfer-store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir()
    url = f"sqlite:///{database}"
    ckpt = str(VENV_BIN / "ckpt")
    subprocess.run([ckpt, "db", "upgrade", "--database-url", url], check=True, capture_output=True)
    created = subprocess.run(
        [ckpt, "keys", "create", "--database-url", url, "--entity", "default", "--name", "bench"],
        check=True,
        capture_output=True,
        text=True,
    )
    store_env = {name: value.format(store=store) for name, value in STORE_ENV.items()}
    os.environ.update(store_env)
    servers = {
        # The new store for both: start_ours names a blob folder of its own otherwise, one that no
        # run emptied (it grew by every file every run uploaded).
        "ckpt serve (uvicorn)": start_ours("transfer-ckpt-serve", url, store_env),
        "ckpt app on granian": serve(
            GRANIAN,
            "ckpt_registry.server.app:create_app_from_env",
            factory=True,
            env={"CKPT_DATABASE_URL": url, "CKPT_GC_INTERVAL_SECONDS": "0", **store_env},
            log_name="transfer-ckpt-granian",
        ),
    }
    return servers, created.stdout.strip().splitlines()[-1]


# The run --------------------------------------------------------------------------------------

UP, DOWN = "up", "down"


@dataclass
class Rows:
    """Every transfer of one way of moving the file, by direction."""

    name: str
    transfers: dict[str, list[Transfer]] = field(default_factory=lambda: {UP: [], DOWN: []})
    failure: str = ""

    def median(self, direction: str) -> float | None:
        done = self.transfers[direction]
        return statistics.median(t.mb_per_second for t in done) if done else None

    def spread(self, direction: str) -> str:
        done = self.transfers[direction]
        if not done:
            return "FAIL" if self.failure.startswith("FAIL") else "n/a" if self.failure else "-"
        rates = [t.mb_per_second for t in done]
        return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"

    def cpu(self, direction: str) -> str:
        done = self.transfers[direction]
        if not done:
            return "-"
        server = statistics.median(t.server_cpu / t.seconds for t in done)
        client = statistics.median(t.client_cpu / t.seconds for t in done)
        return f"{server:.0%} / {client:.0%}"

    def peak_mb(self) -> int | None:
        done = self.transfers[UP] + self.transfers[DOWN]
        return max(t.peak_rss for t in done) // MB if done else None


def attempt(rows: Rows, direction: str, move: Callable[..., Transfer], *arguments: Any) -> None:
    """`move(*arguments)`, its transfer kept; a failure is printed and kept as the rows' verdict."""
    try:
        rows.transfers[direction].append(move(*arguments))
    except Exception as exc:
        traceback.print_exc()
        rows.failure = f"FAIL: {exc}"[:200]


def start_mlflow(args: argparse.Namespace) -> tuple[Rows, _mlflow.MlflowServer | None]:
    """MLflow's rows, and its server; None, with the reason in the rows, when it is not measured."""
    if not args.mlflow:
        return Rows("MLflow artifact proxy", failure="skipped: --no-mlflow"), None
    # Installed before any server starts, so that pip's work overlaps no timed transfer.
    mlflow = _mlflow.ensure_installed()
    if isinstance(mlflow, str):
        log(f"MLflow is not measured: {mlflow}")
        return Rows("MLflow artifact proxy", failure=f"not measured: {mlflow}"), None
    rows = Rows(f"MLflow {mlflow.version} artifact proxy")
    log(f"starting mlflow server {mlflow.version}")
    try:
        return rows, _mlflow.start(mlflow)
    except Exception as exc:
        log(f"MLflow is not measured: {exc}")
        rows.failure = f"not measured: {exc}"
        return rows, None


def run(args: argparse.Namespace) -> list[Rows]:
    file = source_file(args.size_mib)
    source, size = file.path, file.size
    sink = OUT / "transfer-sink"
    shutil.rmtree(sink, ignore_errors=True)
    sink.mkdir()
    env = {"CKPT_BENCH_TRANSFER_SOURCE": str(source), "CKPT_BENCH_TRANSFER_SINK": str(sink)}
    mlflow_rows, mlflow = start_mlflow(args)
    bare: dict[Software, Server] = {}
    for software in SOFTWARE:
        log(f"starting the bare app under {software.name}")
        name = software.name.replace(" ", "-")
        bare[software] = serve(software, "transfer_app:app", env=env, log_name=f"transfer-{name}")
    log("starting ckpt serve, and its app under granian")
    ours, key = start_ckpt_servers()
    checkpoint = create_checkpoint(next(iter(ours.values())).base_url, key)
    try:
        available = files_route_exists(checkpoint)
        unavailable = "" if available else NOT_AVAILABLE
    except Exception as exc:
        available, unavailable = False, f"FAIL: {exc}"[:200]
    log(f"ckpt serve files route: {unavailable or 'served'}")

    cp = Rows("cp + sync (file to file)")
    bare_rows = {software: Rows(f"bare app, {software.name}") for software in SOFTWARE}
    ckpt_rows = {name: Rows(name, failure=unavailable) for name in ours}
    for round_number in range(1, args.rounds + 1):
        log(f"round {round_number} of {args.rounds}")
        attempt(cp, UP, copy, source, OUT / "transfer-copy.bin")
        for software, server in bare.items():
            sha256 = file.renew()
            name = f"{round_number}-{uuid.uuid4()}.bin"
            url = f"{server.base_url}/upload/{name}"
            attempt(bare_rows[software], UP, upload, args.client, url, source, sha256, server.pid)
            (sink / name).unlink(missing_ok=True)
            url = f"{server.base_url}/download"
            attempt(bare_rows[software], DOWN, download, args.client, url, size, server.pid)
        for index, (name, server) in enumerate(ours.items() if available else ()):
            at = replace(checkpoint, base_url=server.base_url)
            path = f"round-{round_number}/weights-{index}.bin"
            sha256 = file.renew()
            attempt(
                ckpt_rows[name], UP, ckpt_upload, at, args.client, source, sha256, path, server.pid
            )
            attempt(ckpt_rows[name], DOWN, ckpt_download, at, args.client, path, size, server.pid)
        if mlflow is not None:
            path = f"transfer/round-{round_number}/weights.bin"
            sha256 = file.renew()
            url, pid = mlflow.url(path), mlflow.server.pid
            stored = partial(mlflow.stored_sha256, path)
            attempt(mlflow_rows, UP, upload, args.client, url, source, sha256, pid, None, stored)
            attempt(mlflow_rows, DOWN, download, args.client, url, size, pid)
            mlflow.remove(path)

    clients: list[Rows] = []
    if args.client_check:
        # The same bare apps once more with each client: a client whose CPU is near 100% of the
        # wall time is the bottleneck, not the server.
        for client in ("curl", "httpx"):
            for software in (UVICORN_HTTPTOOLS, GRANIAN):
                server = bare[software]
                rows = Rows(f"client {client}, bare app, {software.name}")
                sha256 = file.renew()
                name = f"client-{uuid.uuid4()}.bin"
                url = f"{server.base_url}/upload/{name}"
                attempt(rows, UP, upload, client, url, source, sha256, server.pid)
                (sink / name).unlink(missing_ok=True)
                url = f"{server.base_url}/download"
                attempt(rows, DOWN, download, client, url, size, server.pid)
                clients.append(rows)
    for server in [*bare.values(), *ours.values(), *([mlflow.server] if mlflow else [])]:
        stop(server.child)
    shutil.rmtree(sink, ignore_errors=True)
    return [cp, *bare_rows.values(), *ckpt_rows.values(), mlflow_rows, *clients]


# The table ------------------------------------------------------------------------------------


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


def print_table(all_rows: list[Rows], args: argparse.Namespace) -> None:
    cp, *rest = all_rows
    bare = [rows for rows in rest if rows.name.startswith("bare app")]
    ckpt = [rows for rows in rest if rows.name.startswith("ckpt")]
    mlflow = next(rows for rows in rest if rows.name.startswith("MLflow"))
    clients = [rows for rows in rest if rows.name.startswith("client")]
    best = {
        direction: max((m for rows in bare if (m := rows.median(direction))), default=None)
        for direction in (UP, DOWN)
    }
    header = (
        "what",
        "up MB/s",
        "down MB/s",
        "up/best",
        "down/best",
        "CPU srv/cli up",
        "CPU srv/cli down",
        "peak RSS",
    )
    lines = [header]
    for rows in [cp, *bare, *ckpt, mlflow, *clients]:
        peak = rows.peak_mb()
        lines.append(
            (
                rows.name,
                rows.spread(UP),
                rows.spread(DOWN) if rows is not cp else "",
                ratio(rows.median(UP), best[UP]),
                ratio(rows.median(DOWN), best[DOWN]) if rows is not cp else "",
                rows.cpu(UP),
                rows.cpu(DOWN) if rows is not cp else "",
                f"{peak} MB" if peak else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(
        f"\n{args.size_mib} MiB, {args.rounds} rounds, client {args.client}; MB/s median (min-max)"
    )
    print(rule)
    for index, line in enumerate(lines):
        cells = [
            f" {cell:<{w}} " if column == 0 else f" {cell:>{w}} "
            for column, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("|" + "|".join(cells) + "|")
        if index == 0:
            print(rule)
    print(rule)
    same = {"uvicorn": bare[1], "granian": bare[2]}  # the bare app on the same software
    targets = [("best bare up / cp + sync", ratio(best[UP], cp.median(UP)), "")]
    for rows in ckpt:
        up, down, peak = rows.median(UP), rows.median(DOWN), rows.peak_mb()
        twin = same["granian" if "granian" in rows.name else "uvicorn"]
        targets += [
            (f"{rows.name}: up / best bare up", ratio(up, best[UP]), f">= {TARGET_UP}"),
            (f"{rows.name}: down / best bare down", ratio(down, best[DOWN]), f">= {TARGET_DOWN}"),
            (
                f"{rows.name}: up / down vs {twin.name}",
                f"{ratio(up, twin.median(UP))} / {ratio(down, twin.median(DOWN))}",
                "",
            ),
            (f"{rows.name}: peak RSS", f"{peak} MB" if peak else "-", f"<= {TARGET_RSS_MB} MB"),
            (
                f"{rows.name}: up / MLflow up (same run)",
                ratio(up, mlflow.median(UP)),
                f">= {TARGET_VS_MLFLOW_UP}",
            ),
            (
                f"{rows.name}: down / MLflow down (same run)",
                ratio(down, mlflow.median(DOWN)),
                f">= {TARGET_VS_MLFLOW_DOWN}",
            ),
        ]
    mlflow_peak = mlflow.peak_mb()
    targets.append(
        ("MLflow: peak RSS (its process tree)", f"{mlflow_peak} MB" if mlflow_peak else "-", "")
    )
    width = max(len(name) for name, _, _ in targets)
    for name, value, target in targets:
        print(f"{name:<{width}} {value:>11}   {target}")
    for rows in all_rows:
        if rows.failure:
            print(f"{rows.name}: {rows.failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=("curl", "httpx"), default="curl")
    parser.add_argument(
        "--client-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also move the file once with each client, to see which one is the bottleneck",
    )
    parser.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure MLflow 3's artifact proxy (installed on demand into benchmarks/out/)",
    )
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed: apt-get install -y curl")
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        all_rows = run(args)
    finally:
        stop_children()
    print_table(all_rows, args)


if __name__ == "__main__":
    main()
