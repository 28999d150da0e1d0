"""What handing writes and hashing to a thread buys the local blob store: throughput and the longest
stall of the event loop while one large blob goes in and comes out.

    .venv/bin/python benchmarks/blob_local.py [--mib 512]

Each mode streams `--mib` MiB in 64 KiB pieces (a uvicorn body chunk) into a store in a temporary
folder under ./benchmarks/out, reads it back, and reports MiB/s and the longest gap a 1 ms ticker
saw between its ticks (what every other request on the loop would wait).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from ckpt_registry.blobs.local import LocalBlobStore

PIECE = 64 * 1024
OUT = Path(__file__).resolve().parent / "out"


async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def run(offload: bool, total: int) -> None:
    OUT.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=OUT, prefix="blobs-"))
    store = LocalBlobStore(root)
    store.offload = offload
    await store.open()
    piece = os.urandom(PIECE)
    gaps: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(gaps, stop))
    try:
        started = time.perf_counter()
        upload = await store.begin_upload()
        for _ in range(total // PIECE):
            await asyncio.sleep(0)  # a server awaits each body chunk: the loop runs in between
            await upload.write(piece)
        blob = await upload.finish()
        written = time.perf_counter()
        async for _chunk in store.read(blob.sha256):
            await asyncio.sleep(0)
        read = time.perf_counter()
    finally:
        stop.set()
        await tick
        await store.close()
        shutil.rmtree(root)
    mib = total / 1024 / 1024
    print(
        f"{'thread' if offload else 'inline':6}  write+hash {mib / (written - started):7.1f} MiB/s  "
        f"read {mib / (read - written):7.1f} MiB/s  longest loop stall {max(gaps) * 1000:6.1f} ms  "
        f"p99 tick gap {sorted(gaps)[int(len(gaps) * 0.99)] * 1000:5.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    args = parser.parse_args()
    for offload in (False, True, False, True):
        asyncio.run(run(offload, args.mib * 1024 * 1024))


if __name__ == "__main__":
    main()
