"""One settings object for the whole process, read once at the entry point.

Environment: ``DATABASE_URL`` (optional), ``TIERGATE_HOME`` (data dir, default
``./.tiergate``), ``TIERGATE_CONFIG`` (optional YAML with models and limits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

MOCK_UPSTREAM = "mock://in-process"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class ModelConfig(BaseModel):
    """One model a client can name, and where its traffic goes."""

    model_config = ConfigDict(extra="forbid")

    name: str
    upstream: str = Field(description="Base URL of an OpenAI-compatible API, ending in /v1")
    upstream_model: str | None = None
    api_key_env: str | None = None
    flex_concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)

    @field_validator("upstream")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def target_model(self) -> str:
        return self.upstream_model or self.name

    def api_key(self) -> str | None:
        """The provider key, read from the environment at call time (never stored)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Retention(BaseModel):
    """How long finished history is kept, in days (None: for ever)."""

    model_config = ConfigDict(extra="forbid")

    requests_days: int | None = Field(
        default=None, ge=1, description="finished requests, and finished batches with their lines"
    )
    files_days: int | None = Field(default=None, ge=1, description="processed files")
    events_days: int | None = Field(
        default=7, ge=1, description="procrastinate's finished jobs and their events"
    )
    chunks_per_pass: int = Field(
        default=10, ge=1, description="chunks of each kind a worker deletes per maintenance run"
    )


class Limits(BaseModel):
    """Tunables that a config file may override."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    inflight_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="large inference bodies (over 64 KiB) the gateway holds at once",
    )
    body_wait_s: float = Field(
        default=60.0, gt=0, description="how long a large body may wait for that budget (503)"
    )
    body_read_timeout_s: float = Field(
        default=60.0, gt=0, description="time a client has to send a whole body (408)"
    )
    flex_window_s: int = Field(default=3600, ge=1)
    worker_concurrency: int = Field(default=16, ge=1)
    db_pool_size: int = Field(default=4, ge=1)
    db_max_overflow: int = Field(default=12, ge=0)
    job_pool_size: int = Field(default=4, ge=2)
    waiter_recheck_s: float = Field(default=5.0, gt=0)
    metrics_max_age_s: float = Field(
        default=10.0, ge=0, description="/metrics counts the queue at most this often"
    )
    flex_poll_s: float = Field(
        default=2.0, gt=0, description="a worker looks for deferred requests at least this often"
    )
    retry_base_s: float = Field(default=1.0, ge=0)
    retry_max_s: float = Field(default=60.0, ge=0)
    heartbeat_s: float = Field(default=10.0, gt=0)
    stalled_after_s: int = Field(default=30, ge=1)
    maintenance_every_s: int = Field(default=10, ge=1, le=60)
    upstream_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    max_batch_lines: int = Field(default=50_000, ge=1)
    batch_windows: dict[str, int] = Field(default_factory=lambda: {"24h": 86_400})
    batch_chunk: int = Field(
        default=200, ge=1, description="most lines a batch job has in flight (and flex_concurrency)"
    )
    batch_jobs: int = Field(default=4, ge=1, description="parallel jobs per batch")
    retention: Retention = Field(default_factory=Retention)


def mock_model() -> ModelConfig:
    return ModelConfig(name="mock", upstream=MOCK_UPSTREAM, flex_concurrency=64, max_attempts=3)


@dataclass
class Settings:
    """Everything a tiergate process needs to know, built once and passed down."""

    database_url: str | None = None
    home: Path = field(default_factory=lambda: Path(".tiergate"))
    models: dict[str, ModelConfig] = field(default_factory=lambda: {"mock": mock_model()})
    limits: Limits = field(default_factory=Limits)
    config_path: Path | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        config_path = Path(env["TIERGATE_CONFIG"]) if env.get("TIERGATE_CONFIG") else None
        settings = cls(
            database_url=env.get("DATABASE_URL") or None,
            home=Path(env.get("TIERGATE_HOME", ".tiergate")).resolve(),
            config_path=config_path,
        )
        if config_path is not None:
            settings.apply_config(yaml.safe_load(config_path.read_text()) or {})
        return settings

    def apply_config(self, data: dict[str, Any]) -> None:
        """Merge a parsed config file (see README, "Configuration") into these settings."""
        unknown = set(data) - {"models", "limits"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        for raw in data.get("models") or []:
            model = ModelConfig.model_validate(raw)
            if model.upstream == "mock":
                model.upstream = MOCK_UPSTREAM
            self.models[model.name] = model
        if data.get("limits"):
            self.limits = Limits.model_validate({**self.limits.model_dump(), **data["limits"]})
