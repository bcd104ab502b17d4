"""The admin dashboard's reads (and its sign-in sessions).

Every number comes from the admin views of docs/admin-sql.md (``tiergate_batch_progress``,
``tiergate_usage_by_key``, ``tiergate_requests_per_minute``, the stored ``queue_depth``), so a
page and an admin's SQL agree. Each read is bounded: by a primary key, an indexed batch id, a
recent time window or a LIMIT; none walks the whole ``requests`` table.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.vocabulary import (
    SQL_PRICE_TIER,
    UNSUCCESSFUL,
    UpstreamJobStatus,
    sql_executor_path,
    sql_in,
)

PAGE = 50
# A ``requests r`` row's pricing tier (``batch`` for Batch API lines), as ``tiergate usage``
# and the CLI name it.
R_PRICE_TIER = SQL_PRICE_TIER.replace("batch_id", "r.batch_id").replace(
    "service_tier", "r.service_tier"
)

# Sessions: the cookie holds a random token, the table its sha256.
CREATE_SESSION = text(
    "INSERT INTO dashboard_sessions (token_hash, key_id, expires_at)"
    " VALUES (:token_hash, :key_id, now() + make_interval(secs => :ttl_s))"
)
FIND_SESSION = text(
    "SELECT k.id, k.name FROM dashboard_sessions s JOIN api_keys k ON k.id = s.key_id"
    " WHERE s.token_hash = :token_hash AND s.expires_at > now()"
    " AND k.revoked_at IS NULL AND k.is_admin"
)
DELETE_SESSION = text("DELETE FROM dashboard_sessions WHERE token_hash = :token_hash")
PRUNE_SESSIONS = text("DELETE FROM dashboard_sessions WHERE expires_at < now()")

REQUESTS_PER_MINUTE = text(
    "SELECT extract(epoch FROM minute)::bigint AS minute, price_tier AS tier,"
    " sum(requests)::bigint AS requests, sum(errors)::bigint AS errors"
    " FROM tiergate_requests_per_minute"
    " WHERE minute >= date_trunc('minute', now()) - make_interval(mins => :minutes - 1)"
    " GROUP BY 1, 2 ORDER BY 1, 2"
)
BATCH_IDS = text(
    "SELECT id FROM batches WHERE kind = 'file'"
    " AND (CAST(:key_id AS text) IS NULL OR owner_key_id = :key_id)"
    " AND (CAST(:status AS text) IS NULL OR status = :status)"
    " ORDER BY created_at DESC LIMIT :limit"
)
BATCH_PROGRESS = text(
    "SELECT p.*, k.name AS key_name FROM tiergate_batch_progress p"
    " JOIN api_keys k ON k.id = p.owner_key_id"
    " WHERE p.batch_id = ANY(:ids) ORDER BY p.created_at DESC"
)
BATCH = text(
    "SELECT id, completion_window, input_file_id, output_file_id, error_file_id, metadata,"
    " jsonb_array_length(coalesce(errors->'data', '[]')) AS validation_errors,"
    " in_progress_at, finalizing_at, completed_at, failed_at, expired_at, cancelled_at,"
    " coalesce(completed_at, failed_at, expired_at, cancelled_at) AS ended_at"
    " FROM batches WHERE id = :id AND kind = 'file'"
)
# One page of a batch's validation errors (what ``tiergate batch`` prints: line, code, message).
VALIDATION_ERRORS = text(
    "SELECT e.n, e.error->>'line' AS line, e.error->>'code' AS code,"
    " e.error->>'message' AS message"
    " FROM batches b, jsonb_array_elements(coalesce(b.errors->'data', '[]'))"
    " WITH ORDINALITY AS e(error, n)"
    " WHERE b.id = :id ORDER BY e.n OFFSET :offset LIMIT :limit"
)
BATCH_ERRORS = text(
    "SELECT coalesce(error->>'code', status) AS code, count(*) AS requests FROM requests"
    f" WHERE batch_id = :id AND status IN {sql_in(UNSUCCESSFUL)}"
    " GROUP BY 1 ORDER BY 2 DESC, 1"
)
FIND_REQUESTS = text(
    f"SELECT r.id, r.batch_id, r.custom_id, r.model, {R_PRICE_TIER} AS tier, r.status,"
    " r.created_at, k.name AS key_name FROM requests r JOIN api_keys k ON k.id = r.owner_key_id"
    " WHERE r.id = :q OR (r.custom_id IS NOT NULL AND r.custom_id = :q)"
    " ORDER BY r.created_at DESC LIMIT :limit"
)
REQUEST_COLUMNS = (
    "r.id, r.batch_id, r.custom_id, r.line_no, r.endpoint, r.model, r.service_tier,"
    " r.background, r.stream, r.status, r.attempts, r.response_status, r.error, r.attempt_errors,"
    " r.input_tokens, r.cached_tokens, r.output_tokens, r.reasoning_tokens, r.total_tokens,"
    " r.cost_usd, r.deployment, r.claimed_by, r.created_at, r.started_at, r.finished_at,"
    f" r.expires_at, r.not_before, r.cache, {R_PRICE_TIER} AS tier, k.name AS key_name,"
    f" {sql_executor_path('r.')} AS path, r.upstream_job_id"
)
# A request, with the provider job holding it (by primary key) when it has one.
REQUEST = text(
    f"SELECT {REQUEST_COLUMNS}, j.upstream_batch_id AS job_upstream_batch_id,"
    " j.status AS job_status, j.upstream_status AS job_upstream_status"
    " FROM requests r JOIN api_keys k ON k.id = r.owner_key_id"
    " LEFT JOIN upstream_jobs j ON j.id = r.upstream_job_id"
    " WHERE r.id = :id"
)
REQUEST_BODIES = text("SELECT body, response_body FROM requests WHERE id = :id")
USAGE_BY_DAY = text(
    "SELECT date_trunc('day', hour) AS day, key_name, model, price_tier AS tier,"
    " sum(requests) AS requests,"
    " sum(input_tokens) AS input_tokens, sum(cached_tokens) AS cached_tokens,"
    " sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens,"
    " sum(total_tokens) AS total_tokens, sum(cost_usd) AS cost_usd"
    " FROM tiergate_usage_by_key"
    " WHERE hour >= date_trunc('day', now()) - make_interval(days => :days - 1)"
    " GROUP BY 1, 2, 3, 4 ORDER BY 1 DESC, 2, 3, 4"
)
# Last use: the newest request of the key, one index probe per key.
KEYS = text(
    "SELECT k.id, k.name, k.key_prefix, k.models, k.is_admin, k.created_at, k.revoked_at,"
    " k.rpm, k.tpm, k.budget_usd, k.budget_period, k.weight, b.spent_usd,"
    " (SELECT max(r.created_at) FROM requests r WHERE r.owner_key_id = k.id) AS last_used_at"
    " FROM api_keys k LEFT JOIN tiergate_budgets b ON b.key_id = k.id ORDER BY k.created_at"
)
# Every gateway and worker that beat in the last day (older rows are pruned), newest first.
PROCESSES = text(
    "SELECT id, kind, hostname, pid, started_at, last_seen_at, deployments,"
    " extract(epoch FROM now() - last_seen_at)::float8 AS silent_s"
    " FROM processes ORDER BY last_seen_at DESC, kind, started_at LIMIT :limit"
)
# Providers' Batch API jobs: every open one (``upstream_jobs_open_idx``, materialized so the
# newest-first order never walks the ended ones), and the ended ones a page at a time, newest
# first (``upstream_jobs_created_idx``).
JOB_COLUMNS = (
    "id, model, deployment, api, endpoint, status, rows, upstream_batch_id, upstream_status,"
    " polls, next_poll_at, last_error, counts, created_at, submitted_at, ended_at,"
    " extract(epoch FROM coalesce(ended_at, now()) - created_at)::float8 AS age_s"
)
OPEN_JOBS = text(
    f"WITH open AS MATERIALIZED (SELECT {JOB_COLUMNS} FROM upstream_jobs"
    f" WHERE status <> '{UpstreamJobStatus.ENDED}')"
    " SELECT * FROM open ORDER BY created_at DESC, id DESC LIMIT :limit"
)
ENDED_JOBS = text(
    f"SELECT {JOB_COLUMNS} FROM upstream_jobs WHERE status = '{UpstreamJobStatus.ENDED}'"
    " ORDER BY created_at DESC, id DESC OFFSET :offset LIMIT :limit"
)
FILE = text("SELECT id, filename, bytes, status FROM files WHERE id = :id")
# The webhook deliveries of one response or batch, with their endpoints' URLs: one statement
# (``webhook_deliveries_object_idx``), oldest first.
DELIVERIES = text(
    "SELECT d.event_id, d.event_type, d.status, d.attempts, d.last_status, d.last_error,"
    " d.created_at, d.next_attempt_at, d.delivered_at, d.endpoint_id, e.url"
    " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
    " WHERE d.object_id = :id ORDER BY d.created_at, d.id LIMIT :limit"
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class DashboardStore:
    """SQL for the dashboard."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def _all(self, statement: Any, **params: Any) -> list[RowMapping]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(statement, params)).mappings())

    async def _one(self, statement: Any, **params: Any) -> RowMapping | None:
        rows = await self._all(statement, **params)
        return rows[0] if rows else None

    async def create_session(self, token: str, key_id: str, ttl_s: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(PRUNE_SESSIONS)
            await conn.execute(
                CREATE_SESSION, {"token_hash": token_hash(token), "key_id": key_id, "ttl_s": ttl_s}
            )

    async def session_key(self, token: str) -> RowMapping | None:
        """The admin key of a live session (None: unknown, expired, revoked or not admin)."""
        return await self._one(FIND_SESSION, token_hash=token_hash(token))

    async def delete_session(self, token: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(DELETE_SESSION, {"token_hash": token_hash(token)})

    async def requests_per_minute(self, minutes: int) -> list[RowMapping]:
        return await self._all(REQUESTS_PER_MINUTE, minutes=minutes)

    async def batches(
        self, key_id: str | None, status: str | None, limit: int = PAGE
    ) -> list[RowMapping]:
        async with self.engine.connect() as conn:
            params = {"key_id": key_id, "status": status, "limit": limit}
            ids = [r.id for r in await conn.execute(BATCH_IDS, params)]
            if not ids:
                return []
            return list((await conn.execute(BATCH_PROGRESS, {"ids": ids})).mappings())

    async def batch(self, id: str) -> tuple[RowMapping, RowMapping, list[RowMapping]] | None:
        """A batch's progress (the view's row), its own row and its errors by code."""
        async with self.engine.connect() as conn:
            progress = (await conn.execute(BATCH_PROGRESS, {"ids": [id]})).mappings().first()
            row = (await conn.execute(BATCH, {"id": id})).mappings().first()
            if progress is None or row is None:
                return None
            errors = list((await conn.execute(BATCH_ERRORS, {"id": id})).mappings())
        return progress, row, errors

    async def validation_errors(self, id: str, offset: int, limit: int = PAGE) -> list[RowMapping]:
        """Errors ``offset`` .. ``offset + limit`` of a batch that failed validation."""
        return await self._all(VALIDATION_ERRORS, id=id, offset=offset, limit=limit)

    async def processes(self, limit: int = 200) -> list[RowMapping]:
        return await self._all(PROCESSES, limit=limit)

    async def find_requests(self, q: str, limit: int = PAGE) -> list[RowMapping]:
        return await self._all(FIND_REQUESTS, q=q, limit=limit)

    async def request(self, id: str) -> RowMapping | None:
        return await self._one(REQUEST, id=id)

    async def request_bodies(self, id: str) -> RowMapping | None:
        return await self._one(REQUEST_BODIES, id=id)

    async def usage_by_day(self, days: int) -> list[RowMapping]:
        return await self._all(USAGE_BY_DAY, days=days)

    async def keys(self) -> list[RowMapping]:
        return await self._all(KEYS)

    async def open_jobs(self, limit: int = 200) -> list[RowMapping]:
        """Open provider jobs, newest first (at most ``limit``)."""
        return await self._all(OPEN_JOBS, limit=limit)

    async def ended_jobs(self, offset: int, limit: int = PAGE) -> list[RowMapping]:
        """Ended provider jobs ``offset`` .. ``offset + limit``, newest first."""
        return await self._all(ENDED_JOBS, offset=offset, limit=limit)

    async def file(self, id: str) -> RowMapping | None:
        return await self._one(FILE, id=id)

    async def deliveries(self, object_id: str, limit: int = 200) -> list[RowMapping]:
        """The webhook deliveries of a response or batch (one row per event and endpoint)."""
        return await self._all(DELIVERIES, id=object_id, limit=limit)
