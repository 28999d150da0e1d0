"""Server settings: one class, read from arguments or `CKPT_*` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..contract import MAX_JSON_BODY_BYTES
from ..storage.urls import backend_of


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CKPT_", extra="ignore")

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
    pg_pool_size: int = Field(default=20, ge=1, le=1000)
    pg_connect_timeout: float = Field(default=5.0, gt=0)
    pg_statement_timeout: float = Field(default=10.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        backend_of(url)
        return url
