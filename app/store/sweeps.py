"""The sweeps the workers' maintenance runs over request rows (``worker/maintenance.py``).

Batch windows are swept in ``batches.py`` and orphaned work in ``orphans.py``.
"""

from __future__ import annotations

from sqlalchemy import Integer, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.vocabulary import BatchKind, BatchStatus, Channel, ErrorCode, Status, Tier, sql_error

# Queued work whose window has passed (a retry that came too late, or no worker at all).
EXPIRE_OVERDUE = text(
    f"""
WITH e AS (
    UPDATE requests SET status = '{Status.EXPIRED}', finished_at = now(),
        error = {sql_error(ErrorCode.REQUEST_EXPIRED)}
    WHERE status = '{Status.PENDING}' AND expires_at < now()
      AND custom_id IS NULL  -- Batch API lines expire with their batch ({ErrorCode.BATCH_EXPIRED})
    RETURNING id, batch_id, job_id
), b AS (
    UPDATE batches SET status = '{BatchStatus.EXPIRED}', expired_at = now()
    FROM e WHERE batches.id = e.batch_id AND batches.kind = '{BatchKind.SINGLE}'
)
SELECT e.id, pg_notify('{Channel.DONE}', e.id),
       procrastinate_cancel_job_v1(e.job_id, false, false) AS job
FROM e
"""
)

# Realtime rows whose gateway died mid-call (its heartbeat stopped): nobody will finish them.
REAP_REALTIME = text(
    f"""
WITH dead AS (
    SELECT r.id FROM requests r
    LEFT JOIN gateways g ON g.id = r.gateway_id
    WHERE r.status = '{Status.IN_PROGRESS}' AND r.service_tier = '{Tier.DEFAULT}'
      AND NOT r.background AND r.job_id IS NULL
      AND r.started_at < now() - make_interval(secs => :silent_s)
      AND (g.id IS NULL OR g.last_seen_at < now() - make_interval(secs => :silent_s))
)
UPDATE requests SET status = '{Status.FAILED}', finished_at = now(),
    error = {sql_error(ErrorCode.GATEWAY_INTERRUPTED)}
FROM dead WHERE requests.id = dead.id AND requests.status = '{Status.IN_PROGRESS}'
RETURNING requests.id
"""
).bindparams(bindparam("silent_s", type_=Integer))


class RequestSweeps:
    """Expiry of overdue queued requests and reaping of orphaned realtime rows."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def expire_overdue(self) -> list[str]:
        """Expire single requests still queued past their window; returns their ids."""
        async with self.engine.connect() as conn:
            result = await conn.execute(EXPIRE_OVERDUE)
            return [row.id for row in result]

    async def reap_realtime(self, silent_s: int) -> list[str]:
        """Fail realtime rows whose gateway has not been seen for ``silent_s`` seconds."""
        async with self.engine.connect() as conn:
            result = await conn.execute(REAP_REALTIME, {"silent_s": silent_s})
            return list(result.scalars())
