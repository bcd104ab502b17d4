"""SQL for deferred requests (flex and background) and reads of any request row.

A flex or background request is a row, its single-request ``batches`` row and a procrastinate
job, accepted together. Every status transition is one guarded UPDATE (``WHERE status =
...``) so that a late worker can never overwrite a cancel. Final transitions NOTIFY
``Channel.DONE`` with the request id in the same statement, which wakes blocking clients (see
``app/gateway/waiters.py``). Realtime tracking rows are written by ``realtime.py``; the
maintenance sweeps live in ``sweeps.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.outcomes import Outcome, dumps
from app.store.schema import requests
from app.vocabulary import (
    FINAL,
    LIVE,
    BatchKind,
    BatchStatus,
    Channel,
    ErrorCode,
    Status,
    Task,
    sql_error,
    sql_in,
)

# Rows, their single-request batches and their procrastinate jobs in one statement, hence one
# transaction: an accepted request always has a job (procrastinate's versioned SQL defer
# function). Many submissions share it (group commit): a burst of blocking clients costs a few
# statements, not one pool checkout each. The function returns the job ids in input order
# (procrastinate's own batch_defer relies on that too); ordinality pairs them with the rows.
SUBMIT_MANY = text(
    f"""
WITH input AS (
    SELECT * FROM unnest(
        CAST(:ids AS text[]), CAST(:batch_ids AS text[]), CAST(:owners AS text[]),
        CAST(:endpoints AS text[]), CAST(:models AS text[]), CAST(:tiers AS text[]),
        CAST(:backgrounds AS boolean[]), CAST(:streams AS boolean[]), CAST(:bodies AS text[]),
        CAST(:windows_s AS integer[]), CAST(:queues AS text[]), CAST(:priorities AS integer[])
    ) WITH ORDINALITY AS u(id, batch_id, owner, endpoint, model, tier, background, stream,
                           body, window_s, queue, priority, n)
), job AS (
    SELECT j.id, j.n FROM unnest(procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(queue, '{Task.RUN_REQUEST}', priority, NULL, NULL,
                   jsonb_build_object('request_id', id), NULL)::procrastinate_job_to_defer_v1
        FROM input ORDER BY n
    ))) WITH ORDINALITY AS j(id, n)
), batch AS (
    INSERT INTO batches (id, owner_key_id, kind, endpoint, status, completion_window, total,
                         expires_at, in_progress_at)
    SELECT batch_id, owner, '{BatchKind.SINGLE}', endpoint, '{BatchStatus.IN_PROGRESS}',
           window_s || 's', 1, now() + make_interval(secs => window_s), now()
    FROM input
)
INSERT INTO requests (id, batch_id, owner_key_id, endpoint, model, service_tier, background,
                      stream, status, body, expires_at, job_id)
SELECT i.id, i.batch_id, i.owner, i.endpoint, i.model, i.tier, i.background, i.stream,
       '{Status.PENDING}', CAST(i.body AS jsonb), now() + make_interval(secs => i.window_s),
       job.id
FROM input i JOIN job ON job.n = i.n
"""
)

# Worker claim. 'in_progress' is claimable too: procrastinate runs one job per request at a
# time, so an in_progress row seen here was left by a dead worker whose job was rescued.
# ``attempts`` is the fencing token that later updates must match.
CLAIM = text(
    f"""
UPDATE requests
SET status = '{Status.IN_PROGRESS}', attempts = attempts + 1,
    started_at = coalesce(started_at, now())
WHERE id = :id AND status IN {sql_in(LIVE)}
RETURNING id, endpoint, model, body, attempts, expires_at, service_tier, background,
          expires_at < now() AS expired
"""
).columns(body=JSONB)

FINISH = text(
    f"""
WITH done AS (
    UPDATE requests
    SET status = :status, response_status = :response_status, response_body = :response_body,
        error = :error, input_tokens = :input_tokens, output_tokens = :output_tokens,
        total_tokens = :total_tokens, finished_at = now()
    WHERE id = :id AND status = '{Status.IN_PROGRESS}' AND attempts = :attempt
    RETURNING id, batch_id
), batch AS (
    UPDATE batches SET
        status = CASE WHEN :status = '{Status.EXPIRED}' THEN '{BatchStatus.EXPIRED}'
                      WHEN :status = '{Status.CANCELLED}' THEN '{BatchStatus.CANCELLED}'
                      ELSE '{BatchStatus.COMPLETED}' END,
        completed_at = CASE WHEN :status IN {sql_in([Status.COMPLETED, Status.FAILED])}
                            THEN now() END,
        expired_at = CASE WHEN :status = '{Status.EXPIRED}' THEN now() END
    FROM done WHERE batches.id = done.batch_id AND batches.kind = '{BatchKind.SINGLE}'
)
SELECT pg_notify('{Channel.DONE}', done.id) FROM done
"""
).bindparams(
    bindparam("response_body", type_=JSONB),
    bindparam("error", type_=JSONB),
    bindparam("input_tokens", type_=Integer),
    bindparam("output_tokens", type_=Integer),
    bindparam("total_tokens", type_=Integer),
    bindparam("response_status", type_=Integer),
)

# A retryable failure puts the row back in the queue; the job is rescheduled by procrastinate.
REQUEUE = text(
    f"""
UPDATE requests SET status = '{Status.PENDING}', error = :error
WHERE id = :id AND status = '{Status.IN_PROGRESS}' AND attempts = :attempt
RETURNING id
"""
).bindparams(bindparam("error", type_=JSONB))

CANCEL = text(
    f"""
WITH c AS (
    UPDATE requests SET status = '{Status.CANCELLED}', finished_at = now(),
        error = {sql_error(ErrorCode.CANCELLED)}
    WHERE id = :id AND owner_key_id = :owner AND status IN {sql_in(LIVE)}
    RETURNING id, batch_id, job_id
), batch AS (
    UPDATE batches SET status = '{BatchStatus.CANCELLED}', cancelled_at = now()
    FROM c WHERE batches.id = c.batch_id AND batches.kind = '{BatchKind.SINGLE}'
)
SELECT c.id, pg_notify('{Channel.DONE}', c.id),
       procrastinate_cancel_job_v1(c.job_id, true, false) AS job
FROM c
"""
)

DELETE = text(
    f"""
WITH r AS (
    DELETE FROM requests WHERE id = :id AND owner_key_id = :owner
    RETURNING id, batch_id, job_id, status
), b AS (
    DELETE FROM batches USING r
    WHERE batches.id = r.batch_id AND batches.kind = '{BatchKind.SINGLE}'
)
SELECT r.id, CASE WHEN r.job_id IS NOT NULL AND r.status IN {sql_in(LIVE)}
                  THEN procrastinate_cancel_job_v1(r.job_id, true, true) END AS job
FROM r
"""
)

FINAL_AMONG = text(f"SELECT id FROM requests WHERE id = ANY(:ids) AND status IN {sql_in(FINAL)}")

QUEUE_DEPTH = text(
    "SELECT model, service_tier, status, count(*) AS n FROM requests"
    f" WHERE status IN {sql_in(LIVE)} GROUP BY model, service_tier, status"
)


@dataclass(frozen=True)
class Submission:
    """A flex or background request about to be accepted."""

    id: str
    batch_id: str
    owner: str
    endpoint: str
    model: str
    tier: str
    background: bool
    stream: bool
    body: dict[str, Any]
    window_s: int
    queue: str
    priority: int


class RequestStore:
    """Deferred requests' life (submit, claim, finish, requeue, cancel, delete) and reads."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def submit(self, sub: Submission) -> None:
        """Insert the row, its single-request batch and its job, atomically."""
        await self.submit_many([sub])

    async def submit_many(self, subs: list[Submission]) -> None:
        """Accept many submissions in one statement (all or none)."""
        async with self.engine.connect() as conn:
            await conn.execute(
                SUBMIT_MANY,
                {
                    "ids": [s.id for s in subs],
                    "batch_ids": [s.batch_id for s in subs],
                    "owners": [s.owner for s in subs],
                    "endpoints": [s.endpoint for s in subs],
                    "models": [s.model for s in subs],
                    "tiers": [s.tier for s in subs],
                    "backgrounds": [s.background for s in subs],
                    "streams": [s.stream for s in subs],
                    "bodies": [dumps(s.body) for s in subs],
                    "windows_s": [s.window_s for s in subs],
                    "queues": [s.queue for s in subs],
                    "priorities": [s.priority for s in subs],
                },
            )

    async def claim(self, id: str) -> RowMapping | None:
        """Take a request for one attempt; None when it is no longer live."""
        async with self.engine.connect() as conn:
            return (await conn.execute(CLAIM, {"id": id})).mappings().first()

    async def finish(self, id: str, attempt: int, outcome: Outcome) -> bool:
        """Store the final outcome; False when the row moved on (cancelled, deleted)."""
        async with self.engine.connect() as conn:
            result = await conn.execute(FINISH, {"id": id, "attempt": attempt, **outcome.params()})
            return result.first() is not None

    async def requeue(self, id: str, attempt: int, error: dict[str, Any]) -> bool:
        """Put a request back in the queue after a retryable failure of ``attempt``."""
        async with self.engine.connect() as conn:
            result = await conn.execute(REQUEUE, {"id": id, "attempt": attempt, "error": error})
            return result.first() is not None

    async def get(self, id: str, owner: str) -> RowMapping | None:
        """The row, if it exists and belongs to ``owner``."""
        query = select(requests).where(requests.c.id == id, requests.c.owner_key_id == owner)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().first()

    async def get_many(self, wanted: list[tuple[str, str]]) -> list[RowMapping | None]:
        """``get`` for many (id, owner) pairs in one query, in order (woken waiters read
        their answers together)."""
        query = select(requests).where(requests.c.id.in_({id for id, _ in wanted}))
        async with self.engine.connect() as conn:
            found = {row["id"]: row for row in (await conn.execute(query)).mappings()}
        rows = [found.get(id) for id, _ in wanted]
        return [
            row if row and row["owner_key_id"] == owner else None
            for row, (_, owner) in zip(rows, wanted, strict=True)
        ]

    async def cancel(self, id: str, owner: str) -> bool:
        """Cancel a live request of ``owner``; False when there was nothing to cancel."""
        async with self.engine.connect() as conn:
            result = await conn.execute(CANCEL, {"id": id, "owner": owner})
            return result.first() is not None

    async def delete(self, id: str, owner: str) -> bool:
        """Delete a request of ``owner`` (and cancel its job if it was live)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(DELETE, {"id": id, "owner": owner})).first() is not None

    async def final_among(self, ids: list[str]) -> list[str]:
        """Which of these requests are already final (the waiters' safety net: one query)."""
        async with self.engine.connect() as conn:
            return list((await conn.execute(FINAL_AMONG, {"ids": ids})).scalars())


async def queue_depth(engine: AsyncEngine) -> list[tuple[str, str, str, int]]:
    """Live rows by model, tier and status (served by the partial index on live statuses)."""
    async with engine.connect() as conn:
        return [(r.model, r.service_tier, r.status, r.n) for r in await conn.execute(QUEUE_DEPTH)]
