"""Benchmark the SDK moving a checkpoint folder against `curl` moving the same files, in one run.

    .venv/bin/python benchmarks/sdk_transfer.py [--files 8] [--file-mib 128] [--rounds 2] [--parallel 4]
        [--resumable-above BYTES]

`ckpt serve` (one worker, local blob store, a new SQLite database) on 127.0.0.1. Each round, with new
content in every file (its last 32 bytes rewritten, so nothing is skipped as held already):
`curl` PUTs the files to a new checkpoint, `--parallel` at a time; the SDK uploads the folder to
another (`client.checkpoints.upload`: hashes, asks the server what it has, sends the rest); then
the SDK uploads the same folder again, which must send no file bytes (its result, and the server's
`/metrics` count of request body bytes). Down: `curl` GETs the files into a folder, `--parallel` at a
time, then `client.checkpoints.download` into another (each file hashed and renamed into place). The
table gives MB/s (10^6 bytes/s, wall to wall, median of the rounds) and SDK/curl (target >= 0.8).
Every timed phase starts after ``sync``, so none pays for the writes of the one before; curl goes
first in odd rounds, the SDK in even ones. Both download into ``--down-dir``, by default a folder in
``/dev/shm``: on this project's VM, writing 1 GiB to its ext4 disk took from 0.15 to 4 s at random
(writeback and online discard), whoever wrote it, which decided the ratio more than the clients did.
The server's blob store stays on disk, for curl and the SDK alike.
`--resumable-above 0` makes the SDK send every file as a resumable upload (POST, PATCH, complete)
instead of one PUT; the server's CPU seconds per GB the SDK uploaded and its count of staged bytes it
hashed again are printed too. The process's peak RSS is printed last: the SDK moves each file
through a 1 MiB buffer, so it does not grow with ``--file-mib``. Always exits 0 once it has run.
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
from _transfer import tree_cpu_seconds
from ckpt_registry.client import Client, transfers
from ckpt_registry.contract import CHECKPOINTS_PATH

MB = 1_000_000
MIB = 1024 * 1024
TARGET = 0.8
TAIL = 32
SHM = Path("/dev/shm")
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


def settled() -> float:
    """Flush every dirty page to disk, then start the clock. Each timed phase writes 1 GiB (the
    server's blob store, or the downloaded files); without this, the phase after another pays for
    the kernel writing back the one before, and curl always went first."""
    os.sync()
    return time.perf_counter()


def bytes_up(server: Server) -> float:
    return counted(server, "ckpt_http_body_bytes_total", 'direction="up"')


def counted(server: Server, name: str, labels: str = "") -> float:
    """The sum of the server's `name` series whose labels hold `labels`."""
    total = 0.0
    for line in httpx.get(f"{server.base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name) and labels in line:
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
    options: argparse.Namespace,
    rates: dict[str, list[float]],
    again_seconds: list[float],
    again_bytes: list[float],
    up_cpu: list[float],
) -> None:
    """One round; curl goes first in odd rounds and the SDK in even ones, so neither always
    meets the machine in the state the other left it."""
    total = sum(p.stat().st_size for p in paths)
    parallel = options.parallel
    curl_checkpoint = client.checkpoints.register(model_id, step=2 * round_number).id
    sdk_checkpoint = client.checkpoints.register(model_id, step=2 * round_number + 1).id
    files_url = (
        f"{server.base_url}{CHECKPOINTS_PATH.format(model_id=model_id)}/{curl_checkpoint}/files"
    )
    auth = ["-H", f"Authorization: Bearer {key}"]
    curl_down = options.down_dir / "curl"
    sdk_down = options.down_dir / "sdk"

    def curl_up() -> None:
        renew(paths)
        up = [
            [*CURL, "-T", str(p), "-o", os.devnull, "-H", "Expect:", *auth, f"{files_url}/{p.name}"]
            for p in paths
        ]
        began = settled()
        in_parallel(parallel, up)
        rates["curl up"].append(total / (time.perf_counter() - began))

    def sdk_up() -> None:
        renew(paths)
        began = settled()
        cpu = tree_cpu_seconds(server.pid)
        sent = client.checkpoints.upload(
            model_id, folder, checkpoint_id=sdk_checkpoint, parallel=parallel
        )
        rates["sdk up"].append(total / (time.perf_counter() - began))
        up_cpu.append((tree_cpu_seconds(server.pid) - cpu) / (total / 1e9))
        assert sent.bytes_sent == total, sent
        # The same folder again, before curl's turn (if it is next) renews the files.
        before = bytes_up(server)
        began = settled()
        again = client.checkpoints.upload(
            model_id, folder, checkpoint_id=sdk_checkpoint, parallel=parallel
        )
        again_seconds.append(time.perf_counter() - began)
        assert again.bytes_sent == 0 and again.files_skipped == len(paths), again
        again_bytes.append(bytes_up(server) - before)

    def curl_get() -> None:
        curl_down.mkdir(parents=True)
        down = [
            [*CURL, "-o", str(curl_down / p.name), *auth, f"{files_url}/{p.name}"] for p in paths
        ]
        began = settled()
        in_parallel(parallel, down)
        rates["curl down"].append(total / (time.perf_counter() - began))

    def sdk_get() -> None:
        began = settled()
        client.checkpoints.download(
            model_id, sdk_down, checkpoint_id=sdk_checkpoint, parallel=parallel
        )
        rates["sdk down"].append(total / (time.perf_counter() - began))

    curl_first = round_number % 2 == 0
    for phase in (curl_up, sdk_up) if curl_first else (sdk_up, curl_up):
        phase()

    for stale in (curl_down, sdk_down):
        shutil.rmtree(stale, ignore_errors=True)
    for phase in (curl_get, sdk_get) if curl_first else (sdk_get, curl_get):
        phase()
    for done in (curl_down, sdk_down):
        shutil.rmtree(done, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument(
        "--resumable-above",
        type=int,
        default=None,
        metavar="BYTES",
        help="the SDK sends files above this size as resumable uploads (default: the SDK's own)",
    )
    parser.add_argument(
        "--down-dir",
        type=Path,
        default=SHM / "ckpt-sdk-transfer" if SHM.is_dir() else OUT / "sdk-transfer-down",
        help="where both download (default: in memory, /dev/shm, when there is one)",
    )
    options = parser.parse_args()
    if options.resumable_above is not None:
        # The SDK reads it at each upload (`client.checkpoints.upload` takes no such argument).
        transfers.RESUMABLE_ABOVE = options.resumable_above
    OUT.mkdir(exist_ok=True)
    folder = OUT / "sdk-transfer-source"
    log(f"writing {options.files} x {options.file_mib} MiB of random bytes to {folder}")
    paths = make_folder(folder, options.files, options.file_mib)
    server, key = start_server()
    rates: dict[str, list[float]] = {"curl up": [], "sdk up": [], "curl down": [], "sdk down": []}
    again_seconds: list[float] = []
    again_bytes: list[float] = []
    up_cpu: list[float] = []
    rehashed = 0.0
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
                    options,
                    rates,
                    again_seconds,
                    again_bytes,
                    up_cpu,
                )
                log(
                    f"round {round_number + 1}: "
                    + ", ".join(
                        f"{name} {values[-1] / MB:,.0f} MB/s" for name, values in rates.items()
                    )
                )
            rehashed = counted(server, "ckpt_blob_rehashed_bytes_total")
    finally:
        stop_children()
    print()
    print(
        f"{options.files} x {options.file_mib} MiB, parallel {options.parallel}, "
        f"{options.rounds} rounds, SDK resumable above {transfers.RESUMABLE_ABOVE:,} bytes, "
        "MB/s median (range)"
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
        # Each round's two phases ran minutes apart at most: their ratio is less exposed to a
        # machine whose speed swings between rounds.
        paired = [
            sdk / curl for sdk, curl in zip(rates[f"sdk {way}"], rates[f"curl {way}"], strict=True)
        ]
        print(
            f"    per round: {', '.join(f'{r:.2f}' for r in paired)}; "
            f"median {statistics.median(paired):.2f}"
        )
    print(
        f"  second upload of the same folder: {statistics.median(again_seconds):.2f} s, "
        f"0 file bytes sent (request bytes the server received: "
        f"{max(again_bytes):,.0f})"
    )
    print(
        f"  server CPU per GB the SDK uploaded: {statistics.median(up_cpu):.2f} s "
        f"({min(up_cpu):.2f}-{max(up_cpu):.2f})"
    )
    print(f"  staged bytes the server hashed again: {rehashed:,.0f}")
    # Memory stays flat for any file size: the benchmark process (SDK and all) at its peak.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"  this process's peak RSS: {peak / MB:,.0f} MB ({options.file_mib} MiB files)")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(options.down_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
