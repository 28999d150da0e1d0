"""Which S3 library the blob store uses: upload and download of one object to moto, per library.

    .venv/bin/python benchmarks/blob_s3_clients.py [--mib 256] [--rounds 2]

Starts moto's S3 server on a free loopback port, then runs each client in a fresh process (so one
library's imports and buffers do not count against another): a streamed multipart upload of
`--mib` MiB in 8 MiB parts from one reused buffer, then a streamed download. Prints wall time, MiB/s
and the peak RSS of the client process above its RSS after imports, and whether the library can sign
an `x-amz-checksum-sha256` header into a presigned PUT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

HOST = "127.0.0.1"
BUCKET = "bench"
PART = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
CLIENTS = ["aiobotocore", "boto3-thread", "obstore"]


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def parts(total: int) -> Iterator[bytes]:
    buffer = os.urandom(PART)  # one buffer sent again and again: the source costs no memory
    sent = 0
    while sent < total:
        size = min(PART, total - sent)
        yield buffer if size == PART else buffer[:size]
        sent += size


async def aiobotocore_round(endpoint: str, key: str, total: int) -> tuple[float, float]:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint) as s3:
        started = time.perf_counter()
        upload = await s3.create_multipart_upload(Bucket=BUCKET, Key=key)
        done = []
        for number, part in enumerate(parts(total), start=1):
            answer = await s3.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=part
            )
            done.append({"PartNumber": number, "ETag": answer["ETag"]})
        await s3.complete_multipart_upload(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": done},
        )
        uploaded = time.perf_counter()
        answer = await s3.get_object(Bucket=BUCKET, Key=key)
        received = 0
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(READ_CHUNK):
                received += len(chunk)
        assert received == total, received
        return uploaded - started, time.perf_counter() - uploaded


async def boto3_thread_round(endpoint: str, key: str, total: int) -> tuple[float, float]:
    import boto3

    s3: Any = boto3.client("s3", endpoint_url=endpoint)
    started = time.perf_counter()
    upload = await asyncio.to_thread(s3.create_multipart_upload, Bucket=BUCKET, Key=key)
    done = []
    for number, part in enumerate(parts(total), start=1):
        answer = await asyncio.to_thread(
            s3.upload_part,
            Bucket=BUCKET,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=part,
        )
        done.append({"PartNumber": number, "ETag": answer["ETag"]})
    await asyncio.to_thread(
        s3.complete_multipart_upload,
        Bucket=BUCKET,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": done},
    )
    uploaded = time.perf_counter()
    answer = await asyncio.to_thread(s3.get_object, Bucket=BUCKET, Key=key)
    body = answer["Body"]
    received = 0
    while chunk := await asyncio.to_thread(body.read, READ_CHUNK):
        received += len(chunk)
    assert received == total, received
    return uploaded - started, time.perf_counter() - uploaded


async def obstore_round(endpoint: str, key: str, total: int) -> tuple[float, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, endpoint=endpoint, client_options={"allow_http": True})

    async def source() -> AsyncIterator[bytes]:
        for part in parts(total):
            yield part

    started = time.perf_counter()
    await obstore.put_async(store, key, source(), chunk_size=PART, max_concurrency=1)
    uploaded = time.perf_counter()
    answer = await obstore.get_async(store, key)
    received = 0
    async for chunk in answer.stream(min_chunk_size=READ_CHUNK):
        received += len(chunk)
    assert received == total, received
    return uploaded - started, time.perf_counter() - uploaded


def presign_with_checksum(client: str, endpoint: str) -> str:
    """Whether the library signs `x-amz-checksum-sha256` into a presigned PUT URL."""
    checksum = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # SHA-256 of b""
    if client == "obstore":
        return "no (sign() takes method, path and expiry only)"
    import boto3
    from botocore.config import Config

    s3: Any = boto3.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4"))
    url: str = s3.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "k", "ChecksumSHA256": checksum}
    )
    return "yes" if "x-amz-checksum-sha256" in url else "no"


def run_client(client: str, endpoint: str, total: int, rounds: int) -> None:
    rounds_fn = {
        "aiobotocore": aiobotocore_round,
        "boto3-thread": boto3_thread_round,
        "obstore": obstore_round,
    }[client]
    # Import before the baseline so the figure is what transfers cost, not what the library weighs.
    if client == "obstore":
        import obstore  # noqa: F401
    else:
        import aiobotocore.session  # noqa: F401
        import boto3  # noqa: F401
    base = rss_kib()
    times = [asyncio.run(rounds_fn(endpoint, f"{client}-{n}", total)) for n in range(rounds)]
    up = min(t[0] for t in times)
    down = min(t[1] for t in times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = total / 1024 / 1024
    print(
        f"{client:13} upload {up:6.2f} s ({mib / up:6.1f} MiB/s)  download {down:6.2f} s "
        f"({mib / down:6.1f} MiB/s)  peak RSS +{(peak - base) / 1024:6.1f} MiB  "
        f"presigned PUT with sha256: {presign_with_checksum(client, endpoint)}",
        flush=True,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", choices=CLIENTS)
    parser.add_argument("--endpoint")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("AWS_REGION", "us-east-1")
    if args.client:
        run_client(args.client, args.endpoint, args.mib * 1024 * 1024, args.rounds)
        return
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    moto = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import boto3

        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
                break
            except Exception:
                time.sleep(0.1)
        print(
            f"{args.mib} MiB, {PART // 1024 // 1024} MiB parts, best of {args.rounds}, moto {endpoint}"
        )
        for client in CLIENTS:
            command = [sys.executable, __file__, "--client", client, "--endpoint", endpoint]
            command += ["--mib", str(args.mib), "--rounds", str(args.rounds)]
            subprocess.run(
                command,
                check=True,
            )
            # moto keeps every object in memory: drop this client's before the next one runs.
            s3: Any = boto3.client("s3", endpoint_url=endpoint)
            for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
                s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
