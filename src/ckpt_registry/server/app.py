"""The application factory: `create_app(settings)` builds the ASGI app; nothing is opened at import."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from prometheus_client import start_http_server
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from .. import __version__
from ..blobs import BlobStore, open_blob_store
from ..blobs.errors import BlobError
from ..collector import collect
from ..storage import PoolOptions, Storage, open_storage
from ..storage.errors import StorageError
from . import dashboard
from .asgi import Layer, stacked
from .errors import blob_error_kind, install_error_handlers
from .fastpath import ListCheckpointsFastPath
from .fastregister import RegisterCheckpointFastPath
from .headlimits import HeadLimits
from .limits import BodyLimit, BodyLimits, BodySizeLimit
from .metrics import Metrics
from .observe import RequestLayer
from .openapi import install_openapi
from .rate_limit import KeyBuckets, RateLimit
from .routes import checkpoints, files, hub, key, models, service, uploads, usage
from .settings import Settings

log = logging.getLogger("ckpt_registry")

METRICS_PUBLISH_SECONDS = 1.0

ROUTERS = (
    models.router,
    checkpoints.router,
    files.router,
    uploads.checkpoint_router,
    uploads.router,
    usage.router,
    key.router,
    service.router,
    dashboard.router,  # `/` and `/dashboard/...`: the browser's page, outside `/v1`
    # Last: its `/{project}/{name}/resolve/...` paths must never shadow one of ours.
    hub.router,
)


async def collect_garbage(
    storage: Storage, blobs: BlobStore, settings: Settings, metrics: Metrics | None = None
) -> None:
    """One collector pass (`collector.collect`), its outcome logged and counted."""
    try:
        done = await collect(
            storage,
            blobs,
            tombstone_ttl=settings.tombstone_ttl_seconds,
            blob_grace=settings.blob_grace_seconds,
            upload_ttl=settings.upload_ttl_seconds,
            put_idle=settings.put_idle_seconds,
        )
    except (StorageError, BlobError) as exc:
        log.warning("garbage collection failed: %s", exc)
        if metrics is not None:
            metrics.gc_runs.labels("failed").inc()
            kind = blob_error_kind(exc)
            if kind is not None:
                metrics.blob_errors.labels(kind).inc()
        return
    if metrics is not None:
        metrics.gc_runs.labels("ok").inc()
        metrics.gc_removed.labels("model_deletes").inc(done.finished_models)
        metrics.gc_removed.labels("tombstones").inc(done.tombstones)
        metrics.gc_removed.labels("uploads").inc(done.expired_uploads)
        metrics.gc_removed.labels("dropped_puts").inc(done.dropped_uploads)
        metrics.gc_removed.labels("blobs").inc(done.blobs)
        metrics.gc_freed_bytes.inc(done.freed_bytes)
    if done.finished_models:
        log.info("finished deleting the rows of %d deleted models", done.finished_models)
    if done.tombstones:
        log.info("purged %d old tombstones", done.tombstones)
    if done.dropped_uploads:
        log.info("removed the staged bytes of %d dropped uploads", done.dropped_uploads)
    if done.blobs:
        log.info("removed %d unreferenced blobs (%d bytes)", done.blobs, done.freed_bytes)


async def collect_garbage_forever(
    storage: Storage, blobs: BlobStore, settings: Settings, metrics: Metrics | None
) -> None:
    """At start (a delete cut short by a crash is finished at once), then every interval (if any)."""
    await collect_garbage(storage, blobs, settings, metrics)
    while settings.gc_interval_seconds > 0:
        await asyncio.sleep(settings.gc_interval_seconds)
        await collect_garbage(storage, blobs, settings, metrics)


async def publish_metrics_forever(storage: Storage, metrics: Metrics) -> None:
    """The request tallies and the pool gauges, once a second: every worker publishes its own (a
    scrape reaches only one of them)."""
    while True:
        metrics.publish()
        usage = storage.pool_usage()
        if usage is not None:
            metrics.observe_pool(usage)
        await asyncio.sleep(METRICS_PUBLISH_SECONDS)


def create_app(settings: Settings | None = None) -> ASGIApp:
    settings = settings or Settings()
    metrics = Metrics() if settings.metrics != "off" else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = open_storage(
            settings.database_url,
            PoolOptions(
                pool_size=settings.pg_pool_size,
                connect_timeout=settings.pg_connect_timeout,
                statement_timeout=settings.pg_statement_timeout,
            ),
        )
        await storage.open()
        blobs = open_blob_store(settings.blob_store_url)
        try:
            await blobs.open()
        except BaseException:
            await storage.close()
            raise
        app.state.storage = storage
        app.state.blobs = blobs
        if metrics is not None:
            metrics.watch_blobs(blobs)
        metrics_server = None
        if metrics is not None and settings.metrics_port is not None and settings.workers == 1:
            # Several workers share one port served by `ckpt serve` itself (`serving.py`).
            metrics_server, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=metrics.registry
            )
        tasks = [asyncio.create_task(collect_garbage_forever(storage, blobs, settings, metrics))]
        if metrics is not None:
            tasks.append(asyncio.create_task(publish_metrics_forever(storage, metrics)))
        # Everything alive now (the framework, the routes, the schemas) lives as long as the process:
        # keep it out of the cyclic collector's full passes, which otherwise walk all of it.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            app.state.storage = None
            await storage.close()
            await blobs.close()

    api = FastAPI(
        title="ckpt-registry",
        version=__version__,
        description="A model checkpoint registry speaking the W&B Training checkpoint API.",
        lifespan=lifespan,
        # The router's trailing-slash redirect builds its Location from the Host header, before
        # any key is checked: `/v1/preview/models/` is a 404 like any other unknown path.
        redirect_slashes=False,
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
    )
    api.state.storage = None
    api.state.settings = settings
    api.state.metrics = metrics
    install_error_handlers(api)
    for router in ROUTERS:
        api.include_router(router)
    install_openapi(api, declared_routes())
    return stacked(asgi_layers(api, settings), api)


def declared_routes() -> list[BaseRoute]:
    """The routes as the routers declare them, full paths included: recent FastAPI versions keep
    included routers wrapped in `app.routes`."""
    return [route for router in ROUTERS for route in router.routes]


def asgi_layers(api: FastAPI, settings: Settings) -> list[Layer]:
    """The bare ASGI layers in front of the FastAPI app, outermost (first to see a request) first."""
    storage: Callable[[], Storage | None] = lambda: api.state.storage  # noqa: E731
    limits = BodyLimits(declared_routes(), default=BodyLimit(settings.max_body_bytes))
    register = RegisterCheckpointFastPath
    register_limit = limits.for_route(register.method, register.route.template)
    # Measured in-process (best of 10 batches, 2,000 list / 500 register requests each, SQLite):
    # list 39.1 us per request before and after this list replaced the hand-nested stack;
    # registration 224 instead of 240 us, its body no longer buffered twice.
    metrics: Metrics | None = api.state.metrics
    layers: list[Layer] = [
        # Every request: its id, its metrics, its access line (when on). Measured on a busy 2-core
        # machine: the list endpoint's on/off ratio 0.988 and 0.949 in two runs through wrk
        # (benchmarks/list_endpoint.py --metrics-cost); in process the layer adds ~5 us per
        # request, ~7.5 with metrics on (benchmarks/request_layer.py).
        lambda app: RequestLayer(
            app,
            metrics,
            serve_metrics=settings.metrics == "on",
            access_log=settings.access_log,
        ),
        # Too many or too large headers, a URL too long, too many query parameters: refused before
        # anything reads them. In process, over an app that answers at once: 1.2 us added per
        # request (0.40 -> 1.62 us, medians of 7 rounds of 20,000, a busy 2-core machine).
        HeadLimits,
        # GETs only, and most requests: in front of the rest, so they pay for nothing behind it.
        lambda app: ListCheckpointsFastPath(app, storage),
        # Reads its own body within its route's limit (413 over it), so it needs nothing in front.
        lambda app: register(app, storage, register_limit),
        # Every other body, read whole within its route's declared limit before the app acts.
        lambda app: BodySizeLimit(app, limits),
    ]
    rate = settings.rate
    if rate is not None:
        # Behind the request layer (a refusal is counted and logged) and the head limits (a request
        # refused there costs no token), in front of the fast paths, so no request that presents a
        # key passes it; absent when off, so it costs nothing.
        buckets = KeyBuckets(rate, settings.rate_limit_burst or max(1, math.ceil(rate.requests)))
        layers.insert(layers.index(HeadLimits) + 1, lambda app: RateLimit(app, buckets))
    return layers


def create_app_from_env() -> ASGIApp:
    """For `uvicorn --factory`: settings from `CKPT_*` environment variables."""
    return create_app(Settings())
