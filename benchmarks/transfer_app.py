"""The transfer benchmark's bare ASGI app: an upload sink that hashes and writes, a file source that
streams, and the probes `server_software.py` uses to check what a server does with them.

Served by each server software under test (`transfer.py`, `server_software.py`); configured by
environment, read per request so that the app imports before the files exist:
CKPT_BENCH_TRANSFER_SOURCE (the file `GET /download` streams), CKPT_BENCH_TRANSFER_SINK (the folder
`PUT /upload/{name}` writes into), CKPT_BENCH_EVENTS (a file the app appends one JSON line to for each
lifespan event and each client disconnect it sees; optional).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ckpt_registry.contract import API_PREFIX

Scope = dict[str, Any]
Message = dict[str, Any]

# The local blob store's read size (READ_CHUNK_BYTES), so the bare download sends the same pieces
# `ckpt serve` does: 4 MiB moved 1 GiB ~35% faster than 1 MiB through uvicorn here.
DOWNLOAD_CHUNK = 4 * 1024 * 1024


def record(event: str, **fields: Any) -> None:
    path = os.environ.get("CKPT_BENCH_EVENTS")
    if path:
        with open(path, "a") as file:
            file.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


async def answer(send: Any, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def answer_json(send: Any, status: int, value: Any) -> None:
    await answer(send, status, json.dumps(value).encode(), b"application/json")


async def upload(name: str, receive: Any, send: Any) -> None:
    """Hash and write the body as it arrives (on the event loop: this is the floor any real handler
    builds on), fsync once at the end, answer the size and the digest."""
    path = Path(os.environ["CKPT_BENCH_TRANSFER_SINK"]) / name
    digest = hashlib.sha256()
    received = chunks = biggest = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                record("upload-disconnect", received=received)
                path.unlink()
                return
            body: bytes = message.get("body", b"")
            if body:
                digest.update(body)
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                received += len(body)
                chunks += 1
                biggest = max(biggest, len(body))
            if not message.get("more_body", False):
                break
        os.fsync(fd)
    finally:
        os.close(fd)
    await answer_json(
        send,
        201,
        {
            "size_bytes": received,
            "sha256": digest.hexdigest(),
            "chunks": chunks,
            "biggest_chunk": biggest,
        },
    )


async def download(receive: Any, send: Any) -> None:
    """Stream the source file with its Content-Length; stop when the client goes away (seen through
    `receive`, as ASGI servers before spec 2.4 may let `send` succeed on a closed connection)."""
    path = os.environ["CKPT_BENCH_TRANSFER_SOURCE"]
    gone = asyncio.Event()

    async def watch_for_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch_for_disconnect())
    sent = 0
    try:
        with open(path, "rb", buffering=0) as file:
            size = os.fstat(file.fileno()).st_size
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", str(size).encode()),
                    ],
                }
            )
            while chunk := file.read(DOWNLOAD_CHUNK):
                if gone.is_set():
                    record("download-disconnect", sent=sent, size=size, seen_by="receive")
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
                # A send on a closed connection may return at once without yielding (uvicorn):
                # yield, so that the watcher can see the disconnect (~1,000 times a GiB).
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b""})
            # Sends that succeed on a connection the client closed end here, the disconnect unseen.
            record("download-complete", sent=sent, disconnect_seen=gone.is_set())
    except OSError as exc:
        record("download-disconnect", sent=sent, seen_by=f"send raised {type(exc).__name__}")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            record("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            record("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    method, path = scope["method"], scope["path"]
    if method == "PUT" and path.startswith("/upload/"):
        await upload(path.removeprefix("/upload/"), receive, send)
    elif method == "GET" and path == "/download":
        await download(receive, send)
    elif method == "GET" and path == "/whoami":
        # Which process answered and from which client port: tells workers and keep-alive apart.
        await answer_json(send, 200, {"pid": os.getpid(), "client": scope.get("client")})
    elif method == "GET" and path == f"{API_PREFIX}/health":
        await answer_json(send, 200, {"status": "ok"})
    else:
        await answer(send, 404, b"not found")
