"""The sweeps the workers' maintenance runs over request rows (``worker/maintenance.py``).

Each looks only at live rows through a partial index, so it costs the same with millions of
finished rows.

Batch windows are swept in ``batches.py`` and orphaned work in ``orphans.py``.
"""

from __future__ import annotations

from sqlalchemy import Integer, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.outcomes import Ended, ended_columns
from app.vocabulary import Channel, ErrorCode, Status, Tier, sql_error

# A request run this many times without an end (its worker died each time) is given up.
MAX_RUNS = 10

# Queued work whose window has passed (a retry that came too late, or no worker at all).
# Batch API lines expire with their batch ({ErrorCode.BATCH_EXPIRED}, see batches.py).
EXPIRE_OVERDUE = text(
    f"""
WITH e AS (
    UPDATE requests SET status = '{Status.EXPIRED}', finished_at = now(),
        error = {sql_error(ErrorCode.REQUEST_EXPIRED)}
    WHERE status = '{Status.PENDING}' AND custom_id IS NULL AND expires_at < now()
    RETURNING {ended_columns()}
)
SELECT e.*, pg_notify('{Channel.DONE}', e.id) FROM e
"""
)

# Deferred requests claimed by a worker that fell silent (SIGKILL, a lost host): nobody will
# finish them, so they go back to the queue, or end after MAX_RUNS attempts.
RESCUE_CLAIMED = text(
    f"""
WITH dead AS MATERIALIZED (
    SELECT r.id, r.attempts FROM requests r
    LEFT JOIN processes p ON p.id = r.claimed_by
    WHERE r.status = '{Status.IN_PROGRESS}' AND r.custom_id IS NULL AND r.claimed_by IS NOT NULL
      AND r.upstream_job_id IS NULL  -- a provider job holds it: its poller finishes it
      AND (p.id IS NULL OR p.last_seen_at < now() - make_interval(secs => :silent_s))
), back AS (
    UPDATE requests SET status = '{Status.PENDING}', claimed_by = NULL, not_before = NULL
    WHERE status = '{Status.IN_PROGRESS}'
      AND id = ANY(ARRAY(SELECT id FROM dead WHERE attempts < {MAX_RUNS}))
    RETURNING id, model
), given_up AS (
    UPDATE requests SET status = '{Status.FAILED}', finished_at = now(),
        error = {sql_error(ErrorCode.PROCESSING_FAILED)}
    WHERE status = '{Status.IN_PROGRESS}'
      AND id = ANY(ARRAY(SELECT id FROM dead WHERE attempts >= {MAX_RUNS}))
    RETURNING {ended_columns()}
), woken AS (
    SELECT pg_notify('{Channel.WORK}', model) FROM (SELECT DISTINCT model FROM back) AS m
)
SELECT x.*, (SELECT count(*) FROM woken) AS woken FROM (
    SELECT id, false AS gave_up, model, NULL AS tier, NULL AS executor, 1 AS rows FROM back
    UNION ALL
    SELECT g.id, true AS gave_up, g.model, g.tier, g.executor, g.rows
    FROM given_up g, LATERAL pg_notify('{Channel.DONE}', g.id)
) AS x
"""
).bindparams(bindparam("silent_s", type_=Integer))

# Realtime rows whose gateway died mid-call (its heartbeat stopped): nobody will finish them.
REAP_REALTIME = text(
    f"""
UPDATE requests SET status = '{Status.FAILED}', finished_at = now(),
    error = {sql_error(ErrorCode.GATEWAY_INTERRUPTED)}
WHERE status = '{Status.IN_PROGRESS}' AND id = ANY(ARRAY(
    SELECT r.id FROM requests r
    LEFT JOIN processes g ON g.id = r.gateway_id
    WHERE r.status = '{Status.IN_PROGRESS}' AND r.service_tier = '{Tier.DEFAULT}'
      AND NOT r.background AND r.job_id IS NULL
      AND r.started_at < now() - make_interval(secs => :silent_s)
      AND (g.id IS NULL OR g.last_seen_at < now() - make_interval(secs => :silent_s))
))
RETURNING id
"""
).bindparams(bindparam("silent_s", type_=Integer))


class RequestSweeps:
    """Expiry of overdue queued requests and reaping of orphaned realtime rows."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def expire_overdue(self) -> list[Ended]:
        """Expire single requests still queued past their window; returns them."""
        async with self.engine.connect() as conn:
            result = await conn.execute(EXPIRE_OVERDUE)
            return [Ended.from_row(row) for row in result.mappings()]

    async def rescue_claimed(self, silent_s: int) -> tuple[list[str], list[Ended]]:
        """Give back the requests of workers silent for ``silent_s`` seconds: (the ids
        requeued, those given up after ``MAX_RUNS`` attempts)."""
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(RESCUE_CLAIMED, {"silent_s": silent_s})).mappings())
        requeued = [r["id"] for r in rows if not r["gave_up"]]
        return requeued, [Ended.from_row(r) for r in rows if r["gave_up"]]

    async def reap_realtime(self, silent_s: int) -> list[str]:
        """Fail realtime rows whose gateway has not been seen for ``silent_s`` seconds."""
        async with self.engine.connect() as conn:
            result = await conn.execute(REAP_REALTIME, {"silent_s": silent_s})
            return list(result.scalars())
