"""Benchmark the SDK moving a checkpoint folder against `curl` moving the same files, in one run.

    .venv/bin/python benchmarks/sdk_transfer.py [--files 8] [--file-mib 128] [--rounds 2] [--parallel 4]

`ckpt serve` (one worker, local blob store, a new SQLite database) on 127.0.0.1. Each round, with new
content in every file (its last 32 bytes rewritten, so nothing is skipped as held already):
`curl` PUTs the files to a new checkpoint, `--parallel` at a time; the SDK uploads the folder to
another (`client.checkpoints.upload`: hashes, asks the server what it has, sends the rest); then
the SDK uploads the same folder again, which must send no file bytes (its result, and the server's
`/metrics` count of request body bytes). Down: `curl` GETs the files into a folder, `--parallel` at a
time, then `client.checkpoints.download` into another (each file hashed and renamed into place). The
table gives MB/s (10^6 bytes/s, wall to wall, median of the rounds) and SDK/curl (target >= 0.8).
The process's peak RSS is printed last: the SDK moves each file through a 1 MiB buffer, so it
does not grow with ``--file-mib``. Always exits 0 once it has run.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from _common import OUT, log
from _servers import VENV_BIN, Server, start_ours, stop_children
from ckpt_registry.client import Client
from ckpt_registry.contract import CHECKPOINTS_PATH

MB = 1_000_000
MIB = 1024 * 1024
TARGET = 0.8
TAIL = 32
CURL = ["curl", "-sS", "-w", "%{http_code}"]


def make_folder(folder: Path, files: int, file_mib: int) -> list[Path]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    made = []
    for index in range(files):
        path = folder / f"model-{index:05d}-of-{files:05d}.safetensors"
        with path.open("wb") as out:
            for _ in range(file_mib // 4):
                out.write(random.randbytes(4 * MIB))  # incompressible, and faster than urandom
        made.append(path)
    return made


def renew(paths: list[Path]) -> None:
    """New content in every file: its last bytes rewritten."""
    for path in paths:
        with path.open("r+b") as out:
            out.seek(-TAIL, os.SEEK_END)
            out.write(os.urandom(TAIL))


def start_server() -> tuple[Server, str]:
    database = OUT / "sdk-transfer.sqlite"
    for stale in OUT.glob("sdk-transfer.sqlite*"):
        stale.unlink()
    store = OUT / "sdk-transfer-blobs"
    shutil.rmtree(store, ignore_errors=True)
    url = f"sqlite:///{database}"
    ckpt = str(VENV_BIN / "ckpt")
    subprocess.run([ckpt, "db", "upgrade", "--database-url", url], check=True, capture_output=True)
    created = subprocess.run(
        [ckpt, "keys", "create", "--database-url", url, "--entity", "default", "--name", "bench"],
        check=True,
        capture_output=True,
        text=True,
    )
    server = start_ours("sdk-transfer", url, env={"CKPT_BLOB_URL": str(store)})
    return server, created.stdout.strip().splitlines()[-1]


def bytes_up(server: Server) -> float:
    total = 0.0
    for line in httpx.get(f"{server.base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith("ckpt_http_body_bytes_total") and 'direction="up"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def in_parallel(parallel: int, commands: list[list[str]]) -> None:
    def run(args: list[str]) -> None:
        ran = subprocess.run(args, capture_output=True, text=True, check=False)
        if ran.returncode != 0 or not ran.stdout.startswith("20"):
            raise RuntimeError(f"curl failed: {ran.stdout} {ran.stderr}")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(run, commands))


def one_round(
    client: Client,
    server: Server,
    key: str,
    model_id: str,
    round_number: int,
    paths: list[Path],
    folder: Path,
    parallel: int,
    rates: dict[str, list[float]],
    again_seconds: list[float],
    again_bytes: list[float],
) -> None:
    total = sum(p.stat().st_size for p in paths)
    curl_checkpoint = client.checkpoints.register(model_id, step=2 * round_number).id
    files_url = (
        f"{server.base_url}{CHECKPOINTS_PATH.format(model_id=model_id)}/{curl_checkpoint}/files"
    )
    auth = ["-H", f"Authorization: Bearer {key}"]
    renew(paths)
    up = [
        [*CURL, "-T", str(p), "-o", os.devnull, "-H", "Expect:", *auth, f"{files_url}/{p.name}"]
        for p in paths
    ]
    began = time.perf_counter()
    in_parallel(parallel, up)
    rates["curl up"].append(total / (time.perf_counter() - began))

    renew(paths)
    sdk_checkpoint = client.checkpoints.register(model_id, step=2 * round_number + 1).id
    began = time.perf_counter()
    sent = client.checkpoints.upload(
        model_id, folder, checkpoint_id=sdk_checkpoint, parallel=parallel
    )
    rates["sdk up"].append(total / (time.perf_counter() - began))
    assert sent.bytes_sent == total, sent

    before = bytes_up(server)
    began = time.perf_counter()
    again = client.checkpoints.upload(
        model_id, folder, checkpoint_id=sdk_checkpoint, parallel=parallel
    )
    again_seconds.append(time.perf_counter() - began)
    assert again.bytes_sent == 0 and again.files_skipped == len(paths), again
    again_bytes.append(bytes_up(server) - before)

    curl_down = OUT / "sdk-transfer-curl-down"
    sdk_down = OUT / "sdk-transfer-sdk-down"
    for stale in (curl_down, sdk_down):
        shutil.rmtree(stale, ignore_errors=True)
    curl_down.mkdir()
    down = [[*CURL, "-o", str(curl_down / p.name), *auth, f"{files_url}/{p.name}"] for p in paths]
    began = time.perf_counter()
    in_parallel(parallel, down)
    rates["curl down"].append(total / (time.perf_counter() - began))
    began = time.perf_counter()
    client.checkpoints.download(model_id, sdk_down, checkpoint_id=sdk_checkpoint, parallel=parallel)
    rates["sdk down"].append(total / (time.perf_counter() - began))
    for done in (curl_down, sdk_down):
        shutil.rmtree(done, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    options = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    folder = OUT / "sdk-transfer-source"
    log(f"writing {options.files} x {options.file_mib} MiB of random bytes to {folder}")
    paths = make_folder(folder, options.files, options.file_mib)
    server, key = start_server()
    rates: dict[str, list[float]] = {"curl up": [], "sdk up": [], "curl down": [], "sdk down": []}
    again_seconds: list[float] = []
    again_bytes: list[float] = []
    try:
        with Client(api_key=key, base_url=f"{server.base_url}/v1") as client:
            model = client.models.create(
                project="bench", name=f"sdk-{uuid.uuid4()}", base_model="none"
            )
            for round_number in range(options.rounds):
                one_round(
                    client,
                    server,
                    key,
                    model.id,
                    round_number,
                    paths,
                    folder,
                    options.parallel,
                    rates,
                    again_seconds,
                    again_bytes,
                )
                log(
                    f"round {round_number + 1}: "
                    + ", ".join(
                        f"{name} {values[-1] / MB:,.0f} MB/s" for name, values in rates.items()
                    )
                )
    finally:
        stop_children()
    print()
    print(
        f"{options.files} x {options.file_mib} MiB, parallel {options.parallel}, "
        f"{options.rounds} rounds, MB/s median (range)"
    )
    for name, values in rates.items():
        print(
            f"  {name:<10} {statistics.median(values) / MB:>8,.0f} "
            f"({min(values) / MB:,.0f}-{max(values) / MB:,.0f})"
        )
    for way in ("up", "down"):
        ratio = statistics.median(rates[f"sdk {way}"]) / statistics.median(rates[f"curl {way}"])
        verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
        print(f"  SDK/curl {way:<5} {ratio:.2f} (target >= {TARGET}: {verdict})")
    print(
        f"  second upload of the same folder: {statistics.median(again_seconds):.2f} s, "
        f"0 file bytes sent (request bytes the server received: "
        f"{max(again_bytes):,.0f})"
    )
    # Memory stays flat for any file size: the benchmark process (SDK and all) at its peak.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"  this process's peak RSS: {peak / MB:,.0f} MB ({options.file_mib} MiB files)")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
