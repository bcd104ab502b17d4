"""The application's tables. Alembic migrations are checked against this metadata.

Admins read these tables (and the views in ``views.sql``) with plain SQL; see the README.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB

from app.vocabulary import (
    FINAL,
    FINISHED_DELIVERY,
    LIVE,
    LIVE_BATCH,
    BatchKind,
    Endpoint,
    Status,
    UpstreamJobStatus,
    sql_in,
)

metadata = MetaData()

# The rows GET /v1/chat/completions lists (the partial index requests_stored_chat_idx): chat
# completions that completed, were not deleted and were not created with ``store: false``.
STORED_CHAT = (
    f"endpoint = '{Endpoint.CHAT}' AND status = '{Status.COMPLETED}' AND deleted_at IS NULL"
    " AND (body -> 'store') IS DISTINCT FROM 'false'::jsonb"
)


api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("key_hash", Text, nullable=False, unique=True, comment="sha256 of the secret key"),
    Column("key_prefix", Text, nullable=False, comment="first characters, for humans"),
    Column("models", ARRAY(Text), nullable=True, comment="allowed models; NULL means all"),
    Column(
        "is_admin",
        Boolean,
        nullable=False,
        server_default=false(),
        comment="may read every key's usage and costs",
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column(
        "weight",
        Float,
        nullable=False,
        server_default=text("1"),
        comment="share of each model's flex and batch slots against other keys' (default 1)",
    ),
    CheckConstraint("weight > 0", name="api_keys_weight_positive"),
    Column("rpm", Integer, nullable=True, comment="requests per minute; NULL: none"),
    Column("tpm", BigInteger, nullable=True, comment="tokens per minute; NULL: none"),
    Column("budget_usd", Numeric, nullable=True, comment="USD per budget_period"),
    Column("budget_period", Text, nullable=True, comment="day, month or total (UTC)"),
    Column(
        "cache_enabled",
        Boolean,
        nullable=False,
        server_default=text("true"),
        comment="false: the response cache is never read nor written for this key",
    ),
    CheckConstraint("rpm > 0", name="api_keys_rpm_positive"),
    CheckConstraint("tpm > 0", name="api_keys_tpm_positive"),
    CheckConstraint(
        "(budget_usd IS NULL) = (budget_period IS NULL) AND budget_usd >= 0"
        " AND budget_period IN ('day', 'month', 'total')",
        name="api_keys_budget_valid",
    ),
    # A name is unique among live keys (migration 0017); a revoked key's name may come back.
    Index(
        "api_keys_live_name_idx", "name", unique=True, postgresql_where=text("revoked_at IS NULL")
    ),
)

# One token bucket per rate-limited key; gateways lease slices of it (app/store/limits.py).
key_buckets = Table(
    "key_buckets",
    metadata,
    Column("key_id", Text, ForeignKey("api_keys.id"), primary_key=True),
    Column("requests", Float, nullable=False, comment="requests available"),
    Column("tokens", Float, nullable=False, comment="tokens available"),
    Column("granted_requests", Float, nullable=False, server_default="0"),
    Column("granted_tokens", Float, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# What a budgeted key spent per period, added where costs are stored.
key_spend = Table(
    "key_spend",
    metadata,
    Column("key_id", Text, ForeignKey("api_keys.id"), primary_key=True),
    Column("period", Text, primary_key=True),
    Column("period_start", Date, primary_key=True),
    Column("spent_usd", Numeric, nullable=False),
)

processes = Table(
    "processes",
    metadata,
    Column("id", Text, primary_key=True, comment="one row per running gateway or worker process"),
    Column("kind", Text, nullable=False, server_default="gateway", comment="'gateway' or 'worker'"),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deployments", JSONB, nullable=True, comment="its view of every deployment"),
)

files = Table(
    "files",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner_key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    Column("filename", Text, nullable=False),
    Column("purpose", Text, nullable=False, comment="batch, batch_output"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("status", Text, nullable=False, comment="uploading, processed"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column(
        "expires_at",
        DateTime(timezone=True),
        nullable=True,
        comment="from expires_after at upload; the workers delete the file once it passed",
    ),
    Index("files_owner_idx", "owner_key_id", "created_at"),
    # The sweep finds expired files without walking the ones kept for ever.
    Index("files_expires_idx", "expires_at", postgresql_where=text("expires_at IS NOT NULL")),
)

# File contents, in parts of about 1 MiB: uploads and downloads stream part by part.
file_parts = Table(
    "file_parts",
    metadata,
    Column("file_id", Text, ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("data", BYTEA, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner_key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    Column("kind", Text, nullable=False, comment="'single' (one flex/background call) or 'file'"),
    Column("endpoint", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("completion_window", Text, nullable=False),
    Column("input_file_id", Text, nullable=True),
    Column("output_file_id", Text, nullable=True),
    Column("error_file_id", Text, nullable=True),
    Column("errors", JSONB, nullable=True),
    Column("metadata", JSONB, nullable=True),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("completed_count", Integer, nullable=True, comment="frozen when the batch ends"),
    Column("failed_count", Integer, nullable=True, comment="frozen when the batch ends"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("in_progress_at", DateTime(timezone=True), nullable=True),
    Column("finalizing_at", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=True),
    Column("expired_at", DateTime(timezone=True), nullable=True),
    Column("cancelling_at", DateTime(timezone=True), nullable=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
    *(
        Column(name, BigInteger, nullable=True, comment="sum over the lines")
        for name in (
            "input_tokens",
            "cached_tokens",
            "output_tokens",
            "reasoning_tokens",
            "total_tokens",
        )
    ),
    Column("cost_usd", Numeric, nullable=True, comment="sum over the priced lines"),
    Column(
        "traceparent",
        Text,
        nullable=True,
        comment="W3C traceparent of the creating request's span (tracing on)",
    ),
    Index("batches_owner_idx", "owner_key_id", "id"),
    # Retention deletes the oldest finished batches first.
    Index("batches_created_idx", "created_at"),
    # /metrics reads the Batch API's live batches (app/store/fleet_gauges.py).
    Index(
        "batches_live_idx",
        "status",
        postgresql_where=text(f"kind = '{BatchKind.FILE}' AND status IN {sql_in(LIVE_BATCH)}"),
    ),
)

requests = Table(
    "requests",
    metadata,
    Column("id", Text, primary_key=True, comment="the id clients see (resp_..., chatcmpl-...)"),
    Column("batch_id", Text, ForeignKey("batches.id", ondelete="CASCADE"), nullable=True),
    Column("owner_key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    Column("custom_id", Text, nullable=True),
    Column("line_no", Integer, nullable=True, comment="1-based line of the batch input file"),
    Column("endpoint", Text, nullable=False, comment="/v1/responses, /v1/chat/completions, ..."),
    Column("model", Text, nullable=False),
    Column("service_tier", Text, nullable=False, comment="'default' (realtime) or 'flex'"),
    Column("background", Boolean, nullable=False, server_default="false"),
    Column("stream", Boolean, nullable=False, server_default="false"),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("body", JSONB, nullable=False, comment="the request body, secrets never included"),
    Column("response_status", Integer, nullable=True),
    Column("response_body", JSONB, nullable=True),
    Column("error", JSONB, nullable=True, comment="{code, message} of the final failure"),
    Column(
        "attempt_errors",
        JSONB,
        nullable=True,
        comment="each retried attempt: [{attempt, at, error, deployment}]",
    ),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("total_tokens", Integer, nullable=True),
    Column("job_id", BigInteger, nullable=True),
    Column("gateway_id", Text, nullable=True, comment="the gateway proxying a realtime call"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("not_before", DateTime(timezone=True), nullable=True, comment="retry backoff"),
    Column(
        "priority",
        SmallInteger,
        nullable=False,
        server_default="0",
        comment="deferred requests: higher is claimed first",
    ),
    Column(
        "deployment",
        Text,
        nullable=True,
        comment="the deployment that answered (model/deployment for a fallback model)",
    ),
    Column(
        "pinned_deployment",
        Text,
        nullable=True,
        comment="x-tiergate-deployment of a deferred call",
    ),
    Column(
        "claimed_by",
        Text,
        nullable=True,
        comment="the worker process running a deferred request's attempt",
    ),
    Column(
        "cached_tokens",
        Integer,
        nullable=True,
        comment="input tokens read from the provider's prompt cache",
    ),
    Column("reasoning_tokens", Integer, nullable=True, comment="output tokens spent on reasoning"),
    Column(
        "usage_estimated",
        Boolean,
        nullable=False,
        server_default=false(),
        comment="tiergate counted the tokens (the upstream reported none)",
    ),
    Column(
        "cost_usd",
        Numeric,
        nullable=True,
        comment="USD, exact; NULL when unknown (no usage or no price configured)",
    ),
    Column("cache", Text, nullable=True, comment="hit, semantic-hit, miss or bypass"),
    Column(
        "executor",
        Text,
        nullable=True,
        comment="the path its last attempt ran on: direct, flex or batch",
    ),
    Column(
        "upstream_job_id",
        Text,
        nullable=True,
        comment="the provider Batch API job holding it (upstream_jobs.id)",
    ),
    Column(
        "traceparent",
        Text,
        nullable=True,
        comment="W3C traceparent of the accepting span (tracing on)",
    ),
    Column(
        "metadata",
        JSONB,
        nullable=True,
        comment="a chat completion's metadata as POST /v1/chat/completions/{id} set it;"
        " NULL: the request's own (body->'metadata')",
    ),
    Column(
        "deleted_at",
        DateTime(timezone=True),
        nullable=True,
        comment="DELETE /v1/chat/completions/{id}: body and answer cleared, usage and cost kept",
    ),
    # The rows a provider Batch API job holds.
    Index(
        "requests_upstream_job_idx",
        "upstream_job_id",
        postgresql_where=text("upstream_job_id IS NOT NULL"),
    ),
    # Batch lines in input order (result files); also serves lookups by batch_id alone.
    Index(
        "requests_batch_line_idx",
        "batch_id",
        "line_no",
        postgresql_where=text("batch_id IS NOT NULL"),
    ),
    # Batch workers claim chunks of pending lines of one batch.
    Index(
        "requests_batch_pending_idx",
        "batch_id",
        "line_no",
        postgresql_where=text(f"status = '{Status.PENDING}' AND batch_id IS NOT NULL"),
    ),
    Index("requests_owner_created_idx", "owner_key_id", "created_at"),
    # Retention deletes the oldest finished requests first (finished rows only: the versions
    # of a live request do not pay for it).
    Index(
        "requests_finished_created_idx",
        "created_at",
        postgresql_where=text(f"status IN {sql_in(FINAL)}"),
    ),
    # Workers claim deferred requests that are due, per model, highest priority first ...
    Index(
        "requests_deferred_ready_idx",
        "model",
        text("priority DESC"),
        "created_at",
        postgresql_where=text(
            f"status = '{Status.PENDING}' AND custom_id IS NULL AND not_before IS NULL"
        ),
    ),
    # ... expire those whose window passed ...
    Index(
        "requests_deferred_expiry_idx",
        "expires_at",
        postgresql_where=text(f"status = '{Status.PENDING}' AND custom_id IS NULL"),
    ),
    # ... and make retries due when their backoff has passed.
    Index(
        "requests_deferred_later_idx",
        "not_before",
        postgresql_where=text(
            f"status = '{Status.PENDING}' AND custom_id IS NULL AND not_before IS NOT NULL"
        ),
    ),
    # Usage reports bucket finished requests by their finish time.
    Index(
        "requests_finished_at_idx",
        "finished_at",
        postgresql_where=text("finished_at IS NOT NULL"),
    ),
    # The dashboard finds batch lines by custom_id.
    Index(
        "requests_custom_id_idx",
        "custom_id",
        postgresql_where=text("custom_id IS NOT NULL"),
    ),
    # The stored chat completions API pages a key's completed chat completions by
    # (created_at, id) (app/store/chat_completions.py).
    Index(
        "requests_stored_chat_idx",
        "owner_key_id",
        "created_at",
        "id",
        postgresql_where=text(STORED_CHAT),
    ),
    # Hot queries (queue depth, rescue, expiry) only look at live rows: keep them small.
    Index(
        "requests_live_idx",
        "status",
        "model",
        "service_tier",
        postgresql_where=text(f"status IN {sql_in(LIVE)}"),
    ),
)


upstream_jobs = Table(
    "upstream_jobs",
    metadata,
    Column("id", Text, primary_key=True, comment="tiergate's id (ujob_...)"),
    Column("model", Text, nullable=False),
    Column("deployment", Text, nullable=False),
    Column("api", Text, nullable=False, comment="openai or anthropic"),
    Column("endpoint", Text, nullable=False, comment="the rows' API path"),
    Column("status", Text, nullable=False, comment="submitting, running or ended"),
    Column("rows", Integer, nullable=False),
    Column("upstream_file_id", Text, nullable=True),
    Column("upstream_batch_id", Text, nullable=True),
    Column("upstream_status", Text, nullable=True, comment="as the provider said"),
    Column("owner", Text, nullable=True, comment="the worker process submitting or polling"),
    Column("polls", Integer, nullable=False, server_default="0"),
    Column("next_poll_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("counts", JSONB, nullable=True, comment="how its rows ended"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("submitted_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Index(
        "upstream_jobs_open_idx",
        "next_poll_at",
        postgresql_where=text(f"status <> '{UpstreamJobStatus.ENDED}'"),
    ),
    # The dashboard's pages of recent jobs, newest first.
    Index("upstream_jobs_created_idx", "created_at"),
    comment="providers' Batch API jobs that deferred rows were sent in",
)


dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", Text, primary_key=True, comment="sha256 of the cookie"),
    Column("key_id", Text, ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("dashboard_sessions_expires_idx", "expires_at"),
    comment="admin dashboard sign-ins (the cookie holds the token, this table its hash)",
)


# /metrics' queue depth: the last count of live rows, taken by one process at a time (see
# app/store/queue_depth.py), so scrapes read a few rows instead of counting a large queue.
queue_depth = Table(
    "queue_depth",
    metadata,
    Column("model", Text, primary_key=True),
    Column("service_tier", Text, primary_key=True),
    Column("status", Text, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column(
        "oldest_at",
        DateTime(timezone=True),
        nullable=True,
        comment="created_at of the oldest pending row (pending counts only)",
    ),
    comment="live requests by model, tier and status, as last counted",
)

queue_depth_counted = Table(
    "queue_depth_counted",
    metadata,
    Column("one", Boolean, primary_key=True, server_default=text("true")),
    Column("counted_at", DateTime(timezone=True), nullable=True, comment="NULL: never"),
    Column("took_s", Float, nullable=False, server_default=text("0"), comment="last count's time"),
    CheckConstraint("one", name="queue_depth_counted_one_row"),
    comment="when queue_depth was last counted (one row)",
)


response_events = Table(
    "response_events",
    metadata,
    Column(
        "response_id",
        Text,
        ForeignKey("requests.id", ondelete="CASCADE"),
        primary_key=True,
        comment="a background Response created with stream=true",
    ),
    Column("sequence_number", Integer, primary_key=True, comment="0-based, consecutive"),
    Column(
        "event", JSONB, nullable=False, comment="the event as streamed, sequence_number included"
    ),
)


# The response cache (app/cache/): one answer per key, model and canonical request. With
# pgvector, migration 0016 adds ``embedding vector`` (not declared here: it is optional, and
# migrations/env.py leaves it out of the comparison) and cache_entries_semantic_idx.
cache_entries = Table(
    "cache_entries",
    metadata,
    Column("owner_key_id", Text, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("model", Text, primary_key=True),
    Column("key", BYTEA, primary_key=True, comment="sha256 of the canonical request"),
    Column("endpoint", Text, nullable=False),
    Column(
        "context",
        BYTEA,
        nullable=False,
        comment="sha256 of the canonical request without its prompt (semantic matches"
        " need the same one)",
    ),
    Column("prompt", Text, nullable=True, comment="the prompt's text, for verifying"),
    Column("response_body", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("hits", BigInteger, nullable=False, server_default=text("0")),
    Column("last_hit_at", DateTime(timezone=True), nullable=True),
    Index("cache_entries_expiry_idx", "expires_at"),
)


# Signed webhooks (docs/webhooks.md). Endpoints belong to a key (its own events) or to no key
# (every key's events: set by an admin).
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Text, primary_key=True, comment="whep_..."),
    Column(
        "owner_key_id",
        Text,
        ForeignKey("api_keys.id"),
        nullable=True,
        comment="the key whose events it receives; NULL: every key's",
    ),
    Column("url", Text, nullable=False),
    Column("events", ARRAY(Text), nullable=False, comment="event types it receives"),
    Column("secret", Text, nullable=False, comment="whsec_...: signs every delivery"),
    Column("previous_secret", Text, nullable=True, comment="a rotated secret, still signing ..."),
    Column("previous_secret_until", DateTime(timezone=True), nullable=True, comment="... until"),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("disabled_at", DateTime(timezone=True), nullable=True),
    Column("disabled_reason", Text, nullable=True, comment="why: by an admin, or failing for days"),
    Column(
        "failing_since",
        DateTime(timezone=True),
        nullable=True,
        comment="first failed attempt since its last success",
    ),
    Column("last_success_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # One endpoint per URL per key (and one admin-wide endpoint per URL).
    Index(
        "webhook_endpoints_owner_url_idx",
        text("coalesce(owner_key_id, '')"),
        "url",
        unique=True,
    ),
    comment="where webhook events are sent",
)

# The outbox: one row per event and endpoint, written by triggers in the statement that
# makes a background response or a batch final (migration 0021), delivered by the workers.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False, comment="evt_...: the webhook-id of every attempt"),
    Column(
        "endpoint_id",
        Text,
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_type", Text, nullable=False, comment="response.completed, batch.failed, ..."),
    Column("object_id", Text, nullable=False, comment="the response or batch (data.id)"),
    Column("owner_key_id", Text, nullable=False, comment="the key the object belongs to"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column(
        "next_attempt_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        comment="when it is due (a claimed one: when its claim lapses)",
    ),
    Column("last_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_status", Integer, nullable=True, comment="HTTP status of the last attempt"),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    # Workers claim due deliveries per endpoint.
    Index(
        "webhook_deliveries_due_idx",
        "endpoint_id",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
    ),
    Index("webhook_deliveries_event_idx", "event_id", "endpoint_id", unique=True),
    Index("webhook_deliveries_created_idx", "created_at"),
    # Retention deletes the oldest finished deliveries first (finished rows only: pending ones
    # of a disabled endpoint are never walked past) ...
    Index(
        "webhook_deliveries_finished_created_idx",
        "created_at",
        postgresql_where=text(f"status IN {sql_in(FINISHED_DELIVERY)}"),
    ),
    # ... and the dashboard reads the deliveries of one response or batch.
    Index("webhook_deliveries_object_idx", "object_id"),
    comment="webhook events to deliver and how their delivery went",
)
