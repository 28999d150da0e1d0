"""Server settings: one class, read from arguments or `CKPT_*` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..blobs import default_blob_url
from ..contract import MAX_JSON_BODY_BYTES
from ..storage.urls import backend_of
from .rate_limit import Rate
from .requestlog import LogFormat

GIB = 1024**3


class Settings(BaseSettings):
    # A refused setting's message never repeats its value: database and blob URLs carry passwords.
    model_config = SettingsConfigDict(env_prefix="CKPT_", extra="ignore", hide_input_in_errors=True)

    database_url: str = Field(
        default="sqlite:///./ckpt.db",
        description="sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_body_bytes: int = Field(
        default=MAX_JSON_BODY_BYTES, ge=1024, description="the largest JSON request body; 413 above"
    )
    tombstone_ttl_seconds: float = Field(
        default=24 * 3600, gt=0, description="how long a deleted checkpoint's cursor keeps working"
    )
    gc_interval_seconds: float = Field(
        default=3600,
        ge=0,
        description="how often the server purges old tombstones and finishes model deletes cut short; 0: only at start",
    )
    blob_url: str | None = Field(
        default=None,
        description="where file contents are stored: a folder (file:///PATH or a path) or "
        "s3://BUCKET/PREFIX; default with SQLite: the folder beside the file (ckpt.db-blobs); "
        "required with PostgreSQL",
    )
    max_file_bytes: int = Field(default=100 * GIB, ge=1, description="the largest file; 413 above")
    entity_quota_bytes: int | None = Field(
        default=None,
        ge=0,
        description="stored bytes each entity may hold; 507 above; none: no quota",
    )
    blob_grace_seconds: float = Field(
        default=3600,
        ge=0,
        description="how long an unreferenced blob is kept before the collector removes it",
    )
    upload_ttl_seconds: float = Field(
        default=7 * 24 * 3600, gt=0, description="how long a resumable upload may stay unfinished"
    )
    put_idle_seconds: float = Field(
        default=3600,
        gt=0,
        description="S3 store: the collector removes what a plain PUT staged once nothing was "
        "written to it for this long (its request is taken for dropped); the local store knows "
        "at once (a lock)",
    )
    presign: bool = Field(
        default=True,
        description="hand out presigned URLs for transfers when the blob store supports them (S3)",
    )
    presign_expires_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    pg_pool_size: int = Field(default=20, ge=1, le=1000)
    pg_connect_timeout: float = Field(default=5.0, gt=0)
    pg_statement_timeout: float = Field(default=10.0, gt=0)

    header_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a request's headers must all arrive within this time; 408 and closed otherwise",
    )
    min_body_rate: float = Field(
        default=240.0,
        ge=0,
        description="bytes a second a request body must arrive at, on average, once the grace "
        "period has passed; 408 and closed otherwise; 0: no minimum",
    )
    body_rate_grace_seconds: float = Field(
        default=5.0, ge=0, description="how long a body may arrive slower than min_body_rate"
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="open connections per server process; more get 503 with Retry-After",
    )

    rate_limit: str | None = Field(
        default=None,
        description="requests each API key may make, per server process: 10/s, 600/min, 5000/h; "
        "429 with Retry-After above; none: no limit",
    )
    rate_limit_burst: int | None = Field(
        default=None,
        ge=1,
        description="requests a key may make at once before the rate applies; default: the "
        "rate's number (600 for 600/min)",
    )

    metrics: str = Field(
        default="on",
        description="Prometheus metrics: off, on (GET /metrics on the API's port) or a port "
        "number to serve them on alone (only `ckpt serve` opens that port)",
    )
    log_format: LogFormat = Field(default="text", description="text, or json: one object per line")
    access_log: bool = Field(default=False, description="log one line per request")
    api_docs: bool = Field(
        default=False,
        description="serve the interactive API pages /docs (Swagger UI) and /redoc; off by default: "
        "they load their scripts from a public CDN (/openapi.json is always served)",
    )

    @field_validator("metrics")
    @classmethod
    def _metrics_setting(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("off", "on") or (value.isdigit() and 0 < int(value) <= 65535):
            return value
        raise ValueError(f"{value!r}: use off, on, or a port number (1-65535)")

    @field_validator("rate_limit")
    @classmethod
    def _rate_setting(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off", "none"):
            return None
        Rate.parse(value)
        return value

    @property
    def rate(self) -> Rate | None:
        """The per-key rate limit, when one is set."""
        return Rate.parse(self.rate_limit) if self.rate_limit is not None else None

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics are served on alone, when `metrics` names one."""
        return int(self.metrics) if self.metrics.isdigit() else None

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        backend_of(url)
        return url

    @model_validator(mode="after")
    def _blob_store_named(self) -> Settings:
        if not self.blob_url and default_blob_url(self.database_url) is None:
            raise ValueError(
                "with PostgreSQL, set CKPT_BLOB_URL (--blob-url) to the blob store every server "
                "on this database shares: a folder they all see, or s3://BUCKET/PREFIX"
            )
        return self

    @property
    def blob_store_url(self) -> str:
        """`blob_url`, or the folder beside the SQLite file (`ckpt.db` -> `ckpt.db-blobs`)."""
        url = self.blob_url or default_blob_url(self.database_url)
        assert url is not None  # checked by _blob_store_named
        return url
