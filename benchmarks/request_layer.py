"""What the request layer (`server/observe.py`: request id, metrics, access line) costs per request,
in process, with no server or network around it: the layer over an app that answers at once, with
metrics off and on, against that app alone, alternating, in one run.

    .venv/bin/python benchmarks/request_layer.py [--requests 20000] [--rounds 5]

The request is a list request as the fast path sees it (a key, a model id in the path, a 4 KB body).
`benchmarks/list_endpoint.py --metrics-cost` measures the same through uvicorn and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from starlette.types import Message, Receive, Scope, Send

from ckpt_registry.contract import CHECKPOINTS_PATH
from ckpt_registry.server.metrics import Metrics
from ckpt_registry.server.observe import RequestLayer

PAGE = b"x" * 4096


async def answer(_scope: Scope, _receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": PAGE})


async def measure(requests: int, rounds: int) -> dict[str, list[float]]:
    path = CHECKPOINTS_PATH.format(model_id="0b9e6c1e-5a4b-4c3d-9e8f-7a6b5c4d3e2f")
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"limit=20",
        "headers": [(b"host", b"registry"), (b"authorization", b"Bearer ckpt_x")],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: Message) -> None:
        pass

    apps = {
        "app alone": answer,
        "layer, metrics off": RequestLayer(answer, None, serve_metrics=False, access_log=False),
        "layer, metrics on": RequestLayer(answer, Metrics(), serve_metrics=True, access_log=False),
    }
    results: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            start = time.perf_counter()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            results[name].append((time.perf_counter() - start) / requests * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(measure(args.requests, args.rounds))
    alone = min(results["app alone"])
    print(f"request layer, {args.requests:,} requests x {args.rounds} rounds, best round (median):")
    for name, times in results.items():
        extra = "" if name == "app alone" else f"  layer adds {min(times) - alone:.2f} us"
        print(f"  {name:<20} {min(times):6.2f} us ({statistics.median(times):.2f}){extra}")


if __name__ == "__main__":
    main()
