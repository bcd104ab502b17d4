"""One settings object for the whole process, read once at the entry point.

Environment: ``DATABASE_URL`` (optional), ``DATABASE_DIRECT_URL`` (optional: a session
address when ``DATABASE_URL`` is PgBouncer in transaction mode), ``TIERGATE_HOME`` (data
dir, default ``./.tiergate``), ``TIERGATE_CONFIG`` (optional YAML with models and limits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app import config_file, vocabulary
from app.config_file import ConfigError, all_from_validation, raise_all
from app.vocabulary import (
    PRIORITY_ENGINES,
    BatchApi,
    CallClass,
    EngineKind,
    ExecutorKind,
    TokenField,
    UpstreamApi,
)

MOCK_UPSTREAM = "mock://in-process"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


# An endpoint as the config names it (``vocabulary.Endpoint`` is its path).
Endpoint = Literal["responses", "chat", "embeddings"]
ENDPOINT_PATHS: dict[str, Endpoint] = {
    vocabulary.Endpoint.RESPONSES: "responses",
    vocabulary.Endpoint.CHAT: "chat",
    vocabulary.Endpoint.EMBEDDINGS: "embeddings",
}


# USD amounts: exact decimals, never negative, never NaN or infinite.
def _usd(default: Decimal | None = None, description: str = "") -> Any:
    return Field(default=default, ge=0, allow_inf_nan=False, description=description)


class Pricing(BaseModel):
    """What a model (or one deployment) costs, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: Decimal = _usd(description="uncached input tokens")
    output_per_mtok: Decimal = _usd(description="output tokens (reasoning included)")
    cached_input_per_mtok: Decimal | None = _usd(
        description="cached input tokens (the input rate when unset)"
    )
    flex: Decimal | None = _usd(
        description="the provider's multiplier for work run on its flex tier (OpenAI: 0.5);"
        " unset: the tier's multiplier (limits.tier_price)"
    )
    batch: Decimal | None = _usd(
        description="the provider's multiplier for work run through its Batch API (OpenAI,"
        " Anthropic: 0.5); unset: the tier's multiplier"
    )


class TierPrice(BaseModel):
    """Multipliers of the price by tier: realtime and background calls pay ``default``,
    flex calls ``flex``, Batch API lines ``batch``."""

    model_config = ConfigDict(extra="forbid")

    default: Decimal = _usd(Decimal(1))
    flex: Decimal = _usd(Decimal(1))
    batch: Decimal = _usd(Decimal(1))


class FlexExecutor(BaseModel):
    """How a deployment's provider flex tier is called (``executor: flex``, and the ``flex``
    fallback of ``executor: batch``)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(
        default=900.0, ge=1, description="one flex call's timeout (OpenAI advises 15 minutes)"
    )


class BatchExecutor(BaseModel):
    """How a deployment's provider Batch API is used (``executor: batch``)."""

    model_config = ConfigDict(extra="forbid")

    api: BatchApi = Field(
        default=BatchApi.OPENAI,
        description="openai: /v1/files + /v1/batches (OpenAI, or another tiergate);"
        " anthropic: /v1/messages/batches",
    )
    max_lines: int = Field(default=50_000, ge=1, description="rows per upstream job at most")
    gather_s: float = Field(
        default=30.0, ge=0, description="how long rows are gathered before a job is submitted"
    )
    turnaround_s: float = Field(
        default=3_600.0,
        gt=0,
        description="how long a job is expected to take; a job still running when its rows'"
        " windows are margin_s from their end is cancelled and the rest run another way",
    )
    margin_s: float = Field(
        default=600.0,
        ge=0,
        description="a row goes to the Batch API only if its window has turnaround_s plus"
        " this much left; else it runs on the fallback",
    )
    fallback: ExecutorKind = Field(
        default=ExecutorKind.FLEX,
        description="how rows run when the window is too short for a job: flex (the"
        " provider's flex tier; openai only) or direct",
    )
    poll_min_s: float = Field(default=1.0, gt=0, description="the first poll of a job, after")
    poll_max_s: float = Field(default=60.0, gt=0, description="the longest wait between polls")
    completion_window: str = Field(
        default="24h", description="the completion_window sent to an OpenAI-format Batch API"
    )

    @model_validator(mode="after")
    def _fallback(self) -> BatchExecutor:
        if self.fallback == ExecutorKind.BATCH:
            raise ValueError("fallback must be flex or direct")
        if self.fallback == ExecutorKind.FLEX and self.api == BatchApi.ANTHROPIC:
            self.fallback = ExecutorKind.DIRECT  # Anthropic has no flex tier
        return self


class EnginePriority(BaseModel):
    """The engine's ``priority`` field per kind of call (``priority:`` of a deployment).

    vLLM runs lower values first; SGLang, by default, higher ones (docs/fleet.md). Background
    calls take flex's value unless given their own.
    """

    model_config = ConfigDict(extra="forbid")

    realtime: int
    flex: int
    batch: int
    background: int | None = None

    def of(self, call: CallClass) -> int:
        """The value sent with a call of this kind."""
        if call == CallClass.BACKGROUND:
            return self.flex if self.background is None else self.background
        value: int = getattr(self, call.value)
        return value


class EngineLoad(BaseModel):
    """How an engine's own metrics gate deferred calls (``engine_load:`` of a deployment)."""

    model_config = ConfigDict(extra="forbid")

    read_every_s: float = Field(
        default=0.5, gt=0, le=60, description="how often each process reads the metrics"
    )
    timeout_s: float = Field(default=2.0, gt=0, description="one read's timeout")
    max_waiting: int = Field(
        default=0,
        ge=0,
        description="deferred calls start only while the engine has at most this many waiting",
    )
    max_kv_cache: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="... and its KV cache is used below this fraction",
    )
    ramp: int = Field(
        default=8,
        ge=1,
        description="how many more deferred calls one process may start per reading while"
        " the engine has room",
    )


class DeploymentConfig(BaseModel):
    """One server (or provider account) that serves a model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="unique within the model")
    upstream: str = Field(description="Base URL of an OpenAI-compatible API, ending in /v1")
    upstream_model: str | None = Field(default=None, description="the model name it knows")
    api_key_env: str | None = Field(default=None, description="env var holding its key")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra headers; ${VAR} is read from the environment"
    )
    weight: float = Field(default=1.0, gt=0, description="share of traffic when all are healthy")
    max_concurrency: int | None = Field(
        default=None, ge=1, description="calls in flight to it from one process"
    )
    capacity: int | None = Field(
        default=None,
        ge=1,
        description="calls it runs at once from all processes (vLLM's max_num_seqs): with it,"
        " flex and batch calls use only what realtime calls leave",
    )
    api: UpstreamApi | None = Field(
        default=None, description="the API it speaks (the model's when unset)"
    )
    max_tokens_field: TokenField | None = Field(
        default=None, description="the chat token-limit field it reads (the model's when unset)"
    )
    pricing: Pricing | None = Field(default=None, description="overrides the model's pricing")
    executor: ExecutorKind = Field(
        default=ExecutorKind.DIRECT,
        description="how its flex, background and batch work runs: direct (one call per row"
        " to its realtime endpoint), flex (the provider's flex tier), batch (its Batch API)",
    )
    flex: FlexExecutor = Field(default_factory=FlexExecutor)
    batch: BatchExecutor = Field(default_factory=BatchExecutor)
    engine: EngineKind = Field(
        default=EngineKind.NONE,
        description="the inference server (vllm, sglang, llamacpp): deferred calls start only"
        " while its /metrics shows room; none: declared capacity alone",
    )
    metrics_url: str | None = Field(
        default=None, description="the engine's metrics (default: /metrics beside /v1)"
    )
    engine_load: EngineLoad = Field(default_factory=EngineLoad)
    priority: EnginePriority | None = Field(
        default=None,
        description="the engine's priority field per kind of call (vllm, sglang; the engine"
        " must run its priority scheduler)",
    )

    @field_validator("upstream")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return upstream_url(value)

    @field_validator("metrics_url")
    @classmethod
    def _metrics_url(cls, value: str | None) -> str | None:
        if value is not None and (
            urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname
        ):
            raise ValueError(f"metrics_url must be an http:// or https:// URL, not {value!r}")
        return value

    @model_validator(mode="after")
    def _engine(self) -> DeploymentConfig:
        if self.engine == EngineKind.NONE:
            if self.metrics_url is not None:
                raise ValueError("metrics_url needs engine: vllm, sglang or llamacpp")
        elif self.upstream == MOCK_UPSTREAM:
            raise ValueError("engine needs an http(s) upstream (the in-process mock has none)")
        if self.priority is not None and self.engine not in PRIORITY_ENGINES:
            engines = " or ".join(str(e) for e in PRIORITY_ENGINES)
            raise ValueError(f"priority needs engine: {engines} (it schedules by priority)")
        return self

    def engine_metrics_url(self) -> str:
        """Where its engine publishes metrics: ``metrics_url``, else the server's root
        ``/metrics`` (the upstream without its ``/v1``)."""
        if self.metrics_url is not None:
            return self.metrics_url
        return self.upstream.removesuffix("/v1") + "/metrics"

    def executor_text(self) -> str:
        """Its executor as ``tiergate deployments`` and the dashboard show it: ``direct``,
        ``flex (900 s)``, ``batch openai → flex`` (the path of rows whose window is too short
        for a job)."""
        if self.executor == ExecutorKind.FLEX:
            return f"flex ({self.flex.timeout_s:g} s)"
        if self.executor == ExecutorKind.BATCH:
            return f"batch {self.batch.api} → {self.batch.fallback}"
        return str(self.executor)


def upstream_url(value: str) -> str:
    """An upstream's base URL without its trailing slash: http(s) with a host, or ``mock``."""
    if value in ("mock", MOCK_UPSTREAM):
        return MOCK_UPSTREAM
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"upstream must be an http:// or https:// URL with a host (or mock), not {value!r}"
        )
    return value.rstrip("/")


# Fields of a request that never change its answer: left out of the cache key.
NOT_DECIDING = frozenset(
    {
        "stream",
        "stream_options",
        "service_tier",
        "background",
        "store",
        "metadata",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "previous_response_id",  # resolved: the whole conversation is in the input
    }
)
# What decides the answer and so can never be ignored.
ALWAYS_DECIDING = frozenset(
    {
        "model",
        "input",
        "messages",
        "instructions",
        "tools",
        "tool_choice",
        "response_format",
        "text",
        "prompt",
    }
)


class SemanticCache(BaseModel):
    """A cached answer is also served to a request meaning the same (verified)."""

    model_config = ConfigDict(extra="forbid")

    embedding_model: str = Field(
        description="a tiergate model that serves /v1/embeddings, used to embed prompts"
    )
    min_similarity: float = Field(
        default=0.92, gt=0, le=1, description="cosine similarity a candidate needs"
    )
    timeout_s: float = Field(
        default=2.0, gt=0, description="longest wait for an embedding; then it is a miss"
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="sent as the embeddings call's 'dimensions' (OpenAI's text-embedding-3"
        " models shorten their vectors); unset: the model's own size",
    )


class CacheConfig(BaseModel):
    """A model's response cache (``docs/cache.md``)."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(default=False, description="serve the same request's stored answer")
    ttl_s: int = Field(default=86_400, ge=1, description="how long an answer is kept")
    ignore: list[str] = Field(
        default_factory=list,
        description="request fields left out of the cache key (e.g. temperature, max_tokens)",
    )
    semantic: SemanticCache | None = None

    @field_validator("ignore")
    @classmethod
    def _only_sampling(cls, value: list[str]) -> list[str]:
        deciding = sorted(set(value) & ALWAYS_DECIDING)
        if deciding:
            raise ValueError(f"{', '.join(deciding)} always decide the answer: not ignorable")
        return value

    @property
    def enabled(self) -> bool:
        return self.exact or self.semantic is not None


class ModelConfig(BaseModel):
    """One model a client can name, and the deployments that serve it.

    The single-upstream form (``upstream``, ``upstream_model``, ``api_key_env`` on the model)
    stays valid and means one deployment named ``default``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    upstream: str | None = Field(default=None, description="single-deployment shorthand")
    upstream_model: str | None = None
    api_key_env: str | None = None
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    fallbacks: list[str] = Field(
        default_factory=list, description="models tried, in order, when no deployment can answer"
    )
    route_timeout_s: float = Field(
        default=10.0, gt=0, description="longest a realtime call waits for a usable deployment"
    )
    endpoints: list[Endpoint] | None = Field(
        default=None, description="the APIs it serves (all when unset)"
    )
    api: UpstreamApi = Field(
        default=UpstreamApi.RESPONSES,
        description="responses: /v1/responses passed through; chat: the upstream speaks only"
        " /v1/chat/completions and Responses calls are translated (docs/chat-upstreams.md)",
    )
    max_tokens_field: TokenField | None = Field(
        default=None,
        description="the chat field its deployments read the token limit from; unset:"
        " max_tokens for api: chat (every chat server knows it), the client's own for"
        " api: responses",
    )
    flex_concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    pricing: Pricing | None = Field(default=None, description="no pricing: cost is unknown")
    cache: CacheConfig | None = Field(default=None, description="the response cache (off)")

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, value: str | None) -> str | None:
        return None if value is None else upstream_url(value)

    @model_validator(mode="after")
    def _one_form(self) -> ModelConfig:
        if self.upstream is not None:
            if self.deployments:
                raise ValueError("give either 'upstream' or 'deployments', not both")
            self.deployments = [
                DeploymentConfig(
                    name="default",
                    upstream=self.upstream,
                    upstream_model=self.upstream_model,
                    api_key_env=self.api_key_env,
                )
            ]
            self.upstream = self.deployments[0].upstream
        elif not self.deployments:
            raise ValueError("a model needs 'upstream' or at least one of 'deployments'")
        elif self.upstream_model is not None or self.api_key_env is not None:
            raise ValueError("with 'deployments', set upstream_model and api_key_env on each")
        return self

    def duplicate_deployment(self) -> int | None:
        """The index of the first deployment whose name an earlier one has, if any."""
        names = [d.name for d in self.deployments]
        return next((i for i, name in enumerate(names) if name in names[:i]), None)

    def speaks_chat(self, pin: str | None = None) -> bool:
        """Whether a deployment that may serve a call (the pinned one, if any) speaks only
        chat, so that Responses calls must be translatable."""
        return any(
            (d.api or self.api) == UpstreamApi.CHAT
            for d in self.deployments
            if pin is None or d.name == pin
        )

    def serves(self, endpoint: str) -> bool:
        """Whether a call to this API path may go to this model."""
        kind = ENDPOINT_PATHS.get(endpoint)
        return self.endpoints is None or kind is None or kind in self.endpoints


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
    webhook_deliveries_days: int | None = Field(
        default=30, ge=1, description="finished webhook deliveries (delivered or given up)"
    )
    chunks_per_pass: int = Field(
        default=10, ge=1, description="chunks of each kind a worker deletes per maintenance run"
    )


class HealthLimits(BaseModel):
    """When a deployment is taken out of rotation, and for how long."""

    model_config = ConfigDict(extra="forbid")

    failures_to_trip: int = Field(default=3, ge=1, description="faults in a row that take it out")
    cooldown_s: float = Field(default=5.0, gt=0, description="the first cool-down")
    max_cooldown_s: float = Field(default=300.0, gt=0, description="the cool-down's ceiling")


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
    realtime_row_after_s: float = Field(
        default=1.0,
        ge=0,
        description="a realtime call answered whole gets its row, final, when it ends (one"
        " INSERT), or in_progress once it has run this long; 0: at its start, as streams do",
    )
    stream_keepalive_s: float = Field(
        default=5.0, gt=0, description="a waiting flex stream sends a keep-alive comment this often"
    )
    metrics_max_age_s: float = Field(
        default=10.0,
        ge=0,
        description="the queue depth /metrics shows is counted at most this often",
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
    health: HealthLimits = Field(default_factory=HealthLimits)
    tier_price: TierPrice = Field(default_factory=TierPrice)


class WebhooksConfig(BaseModel):
    """Signed webhooks (``webhooks:``; docs/webhooks.md)."""

    model_config = ConfigDict(extra="forbid")

    allow_private: bool = Field(
        default=False,
        description="let an endpoint's host resolve to a loopback, private or link-local address",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=60, description="one delivery attempt")
    retry_base_s: float = Field(
        default=5.0, gt=0, description="backoff: base * 2^(attempt-1), jittered, capped ..."
    )
    retry_max_s: float = Field(default=3600.0, gt=0, description="... at this")
    give_up_after_s: float = Field(
        default=72 * 3600.0, gt=0, description="an event not delivered by this age is failed"
    )
    disable_after_s: float = Field(
        default=72 * 3600.0,
        gt=0,
        description="an endpoint with nothing but failures for this long is disabled",
    )
    per_endpoint: int = Field(
        default=4, ge=1, le=256, description="deliveries in flight per endpoint per worker"
    )
    claim: int = Field(default=64, ge=1, le=1000, description="deliveries claimed at once")
    rotation_grace_s: float = Field(
        default=24 * 3600.0, ge=0, description="rotate-secret: the old secret signs this long too"
    )
    poll_s: float = Field(
        default=5.0, gt=0, description="safety-net look for due deliveries (new ones are NOTIFYed)"
    )


class TracingConfig(BaseModel):
    """What traces carry (``tracing:``; docs/observability.md). Whether they are exported at
    all is the standard ``OTEL_*`` variables' word."""

    model_config = ConfigDict(extra="forbid")

    capture_content: bool = Field(
        default=False,
        description="put prompt and answer text on the upstream call's span (GenAI conventions)",
    )
    content_max_chars: int = Field(
        default=4096, ge=16, le=1_000_000, description="each captured text is cut to this"
    )
    batch_line_sample: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="share of Batch API lines with spans of their own (decided by the line id)",
    )


def mock_model() -> ModelConfig:
    return ModelConfig(name="mock", upstream=MOCK_UPSTREAM, flex_concurrency=64, max_attempts=3)


@dataclass
class Settings:
    """Everything a tiergate process needs to know, built once and passed down."""

    database_url: str | None = None
    # PostgreSQL with a session of its own, when DATABASE_URL is a transaction-mode pooler.
    database_direct_url: str | None = None
    home: Path = field(default_factory=lambda: Path(".tiergate"))
    models: dict[str, ModelConfig] = field(default_factory=lambda: {"mock": mock_model()})
    limits: Limits = field(default_factory=Limits)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    config_path: Path | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        config_path = Path(env["TIERGATE_CONFIG"]) if env.get("TIERGATE_CONFIG") else None
        settings = cls(
            database_url=env.get("DATABASE_URL") or None,
            database_direct_url=env.get("DATABASE_DIRECT_URL") or None,
            home=Path(env.get("TIERGATE_HOME", ".tiergate")).resolve(),
            config_path=config_path,
        )
        if config_path is not None:
            config_file.read(config_path, settings.apply_config)
        return settings

    def apply_config(self, data: dict[str, Any]) -> None:
        """Merge a parsed config file (see README, "Configuration") into these settings.

        Raises ``ConfigError`` naming where the problem is, or ``ConfigErrors`` naming each.
        """
        problems: list[ConfigError] = []
        unknown = set(data) - {"models", "limits", "webhooks", "tracing"}
        if unknown:
            problems.append(
                ConfigError(f"unknown config keys: {sorted(unknown)}", (sorted(unknown)[0],))
            )
        raw_models = data.get("models") or []
        if not isinstance(raw_models, list):
            problems.append(ConfigError("'models' must be a list", ("models",)))
            raw_models = []
        where: dict[str, int] = {}
        broken: set[str] = set()  # models that failed: no second error for naming them
        for index, raw in enumerate(raw_models):
            try:
                model = ModelConfig.model_validate(raw)
            except ValidationError as exc:
                problems += all_from_validation(exc, ("models", index))
                if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                    broken.add(raw["name"])
                continue
            if (twin := model.duplicate_deployment()) is not None:
                problems.append(
                    ConfigError(
                        f"two deployments are named '{model.deployments[twin].name}'",
                        ("models", index, "deployments", twin, "name"),
                    )
                )
            if model.name in where:
                problems.append(
                    ConfigError(f"two models are named '{model.name}'", ("models", index))
                )
                continue
            where[model.name] = index
            self.models[model.name] = model
        problems += self._check_fallbacks(where, broken)
        problems += self._check_caches(where, broken)
        if data.get("limits"):
            try:
                self.limits = Limits.model_validate({**self.limits.model_dump(), **data["limits"]})
            except ValidationError as exc:
                problems += all_from_validation(exc, ("limits",))
        if data.get("webhooks") is not None:
            try:
                self.webhooks = WebhooksConfig.model_validate(data["webhooks"])
            except ValidationError as exc:
                problems += all_from_validation(exc, ("webhooks",))
        if data.get("tracing") is not None:
            try:
                self.tracing = TracingConfig.model_validate(data["tracing"])
            except ValidationError as exc:
                problems += all_from_validation(exc, ("tracing",))
        raise_all(problems)

    def reaches_chat(self, model: ModelConfig, pin: str | None = None) -> bool:
        """Whether a call to ``model`` may be served by a chat-only deployment: one of its
        own (the pinned one, if any) or, unpinned, one of a fallback model's."""
        if model.speaks_chat(pin):
            return True
        if pin is not None:
            return False
        seen, todo = {model.name}, list(model.fallbacks)
        while todo:
            name = todo.pop()
            fallback = self.models.get(name)
            if name in seen or fallback is None:
                continue
            if fallback.speaks_chat():
                return True
            seen.add(name)
            todo.extend(fallback.fallbacks)
        return False

    def _check_fallbacks(self, where: dict[str, int], broken: set[str]) -> list[ConfigError]:
        """Every fallback names another known model, and no chain comes back on itself
        (a model already reported as ``broken`` is not reported again)."""
        problems = []
        for name, model in self.models.items():
            at = ("models", where[name]) if name in where else ()
            for n, fallback in enumerate(model.fallbacks):
                if fallback not in self.models and fallback not in broken:
                    problems.append(
                        ConfigError(f"fallback '{fallback}' is not a model", (*at, "fallbacks", n))
                    )
            if cycle := self._fallback_cycle(name):
                problems.append(
                    ConfigError(f"fallbacks form a cycle: {' -> '.join(cycle)}", (*at, "fallbacks"))
                )
        return problems

    def _check_caches(self, where: dict[str, int], broken: set[str]) -> list[ConfigError]:
        """A semantic cache's embedding model is a known model that serves embeddings."""
        problems = []
        for name, model in self.models.items():
            semantic = model.cache.semantic if model.cache else None
            if semantic is None:
                continue
            at = (
                ("models", where[name], "cache", "semantic", "embedding_model")
                if name in where
                else ()
            )
            embedder = self.models.get(semantic.embedding_model)
            if embedder is None:
                if semantic.embedding_model not in broken:
                    problems.append(ConfigError(f"'{semantic.embedding_model}' is not a model", at))
            elif not embedder.serves(vocabulary.Endpoint.EMBEDDINGS):
                problems.append(
                    ConfigError(f"'{semantic.embedding_model}' does not serve /v1/embeddings", at)
                )
        return problems

    def _fallback_cycle(self, start: str) -> list[str] | None:
        """A chain of fallbacks from ``start`` back to a model already on it, if any."""

        def walk(name: str, chain: list[str]) -> list[str] | None:
            for fallback in self.models[name].fallbacks:
                if fallback not in self.models:
                    continue  # reported on its own
                if fallback in chain:
                    return [*chain, fallback]
                if found := walk(fallback, [*chain, fallback]):
                    return found
            return None

        return walk(start, [start])
