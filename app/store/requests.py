"""SQL for deferred requests (flex and background) and reads of any request row.

The ``requests`` table is the queue of deferred requests: accepting one is a single INSERT
(many share it: group commit) that NOTIFYs ``Channel.WORK``; workers claim due rows of a model
in chunks (``FOR UPDATE SKIP LOCKED``), highest ``priority`` first, and write the results of
many attempts with one statement. Every status transition is one guarded UPDATE (``WHERE
status = ...``, and the attempt number as a fencing token), so a late worker can never
overwrite a cancel. Final transitions NOTIFY ``Channel.DONE`` with the request id in the same
statement, which wakes blocking clients (see ``app/gateway/waiters.py``). Realtime tracking
rows are written by ``realtime.py``; the maintenance sweeps live in ``sweeps.py``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.limits import add_spend
from app.store.new_requests import NewRequest, new_request_arrays
from app.store.outcomes import STORE_OUTCOMES, Outcome, attempt_error, stored_arrays
from app.store.rows import FromRow
from app.store.schema import requests
from app.vocabulary import FINAL, LIVE, BatchKind, Channel, ErrorCode, Status, sql_error, sql_in

# Deferred requests that a worker may claim now (the partial index requests_deferred_ready_idx).
READY = f"status = '{Status.PENDING}' AND custom_id IS NULL AND not_before IS NULL"
# ... and those waiting for a retry's backoff (requests_deferred_later_idx).
LATER = f"status = '{Status.PENDING}' AND custom_id IS NULL AND not_before IS NOT NULL"

# Many submissions, one statement; one NOTIFY per model (PostgreSQL folds duplicates).
SUBMIT_MANY = text(
    f"""
WITH input AS (
    SELECT * FROM unnest(
        CAST(:ids AS text[]), CAST(:owners AS text[]), CAST(:endpoints AS text[]),
        CAST(:models AS text[]), CAST(:tiers AS text[]), CAST(:backgrounds AS boolean[]),
        CAST(:streams AS boolean[]), CAST(:bodies AS text[]), CAST(:windows_s AS integer[]),
        CAST(:priorities AS smallint[]), CAST(:pins AS text[]), CAST(:events AS text[]),
        CAST(:caches AS text[]), CAST(:traceparents AS text[])
    ) AS u(id, owner, endpoint, model, tier, background, stream, body, window_s, priority, pin,
           events, cache, traceparent)
), inserted AS (
    INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, background, stream,
                          status, body, expires_at, priority, pinned_deployment, cache,
                          traceparent)
    SELECT id, owner, endpoint, model, tier, background, stream, '{Status.PENDING}',
           CAST(body AS jsonb), now() + make_interval(secs => window_s), priority, pin, cache,
           traceparent
    FROM input
    RETURNING model
), opening AS (
    -- a streamed background Response's first events (response_events), with its row
    INSERT INTO response_events (response_id, sequence_number, event)
    SELECT input.id, e.ord - 1, e.event
    FROM input, jsonb_array_elements(CAST(input.events AS jsonb)) WITH ORDINALITY AS e(event, ord)
    WHERE input.events IS NOT NULL
)
SELECT pg_notify('{Channel.WORK}', model) FROM (SELECT DISTINCT model FROM inserted) AS m
"""
)

# A worker claims due requests of several models at once, up to its free slots for each.
# ``attempts`` is the fencing token that later updates must match; ``claimed_by`` names the
# worker process, so that the sweep can give the rows of a dead one back to the queue.
# (``id = ANY(ARRAY(...))``, not a join: the planner cannot know how many rows the LIMITs
# let through, and a hash join would scan the whole table to update a few rows.)
CLAIM = text(
    f"""
UPDATE requests AS r
SET status = '{Status.IN_PROGRESS}', attempts = r.attempts + 1,
    started_at = coalesce(r.started_at, now()), claimed_by = :worker
FROM api_keys k
WHERE k.id = r.owner_key_id AND r.status = '{Status.PENDING}' AND r.id = ANY(ARRAY(
    SELECT picked.id
    FROM unnest(CAST(:models AS text[]), CAST(:counts AS integer[])) AS want(model, n),
    LATERAL (
        SELECT id FROM requests
        WHERE {READY} AND model = want.model
        ORDER BY priority DESC, created_at
        LIMIT want.n
        FOR UPDATE SKIP LOCKED
    ) AS picked
))
RETURNING r.id, r.endpoint, r.model, r.body, r.attempts, r.expires_at,
          r.expires_at < now() AS expired, r.deployment, r.pinned_deployment, r.service_tier,
          r.background, r.stream, r.created_at, r.owner_key_id, k.name AS key_name, k.rpm,
          k.tpm, r.cache, k.cache_enabled, r.traceparent
"""
).columns(body=JSONB)

# Results of many attempts, one statement; each final row wakes its blocking client.
FINISH_MANY = text(
    f"WITH done AS ({STORE_OUTCOMES} RETURNING r.id, r.owner_key_id, r.cost_usd),"
    f" spent AS ({add_spend('done')} RETURNING 1)"
    f" SELECT id, pg_notify('{Channel.DONE}', id) FROM done"
)

# A retryable failure puts the row back in the queue, due after its backoff.
REQUEUE = text(
    f"""
UPDATE requests SET status = '{Status.PENDING}', error = :error, claimed_by = NULL,
    not_before = now() + make_interval(secs => :delay_s),
    deployment = coalesce(:deployment, deployment), attempts = attempts - :refund,
    attempt_errors = {attempt_error(":refund", ":error", ":deployment")}
WHERE id = :id AND status = '{Status.IN_PROGRESS}' AND attempts = :attempt
RETURNING id
"""
).bindparams(
    bindparam("error", type_=JSONB),
    bindparam("delay_s", type_=Float),
    bindparam("deployment", type_=Text),
    bindparam("refund", type_=Integer),
)

# Retries whose backoff has passed become claimable; returns when the next one falls due.
PROMOTE_DUE = text(
    f"""
WITH due AS (
    UPDATE requests SET not_before = NULL
    WHERE {LATER} AND not_before <= now()
    RETURNING model
), woken AS (
    SELECT pg_notify('{Channel.WORK}', model) FROM (SELECT DISTINCT model FROM due) AS m
)
SELECT (SELECT count(*) FROM woken) AS models,
       extract(epoch FROM (SELECT min(not_before) FROM requests
                           WHERE {LATER} AND not_before > now()) - now()) AS next_in_s
"""
)

# A worker that stops gives its unfinished rows back at once (no need to wait for the sweep).
RELEASE = text(
    f"""
UPDATE requests SET status = '{Status.PENDING}', claimed_by = NULL
WHERE claimed_by = :worker AND status = '{Status.IN_PROGRESS}' AND custom_id IS NULL
  AND upstream_job_id IS NULL
RETURNING id
"""
)

CANCEL = text(
    f"""
WITH c AS (
    UPDATE requests SET status = '{Status.CANCELLED}', finished_at = now(),
        error = {sql_error(ErrorCode.CANCELLED)}
    WHERE id = :id AND owner_key_id = :owner AND status IN {sql_in(LIVE)}
    RETURNING id
)
SELECT c.id, pg_notify('{Channel.DONE}', c.id) FROM c
"""
)

# Rows accepted before revision 0005 had a single-request batch: it goes with its row. A chat
# completion already deleted by DELETE /v1/chat/completions/{id} is gone for its key too.
DELETE = text(
    f"""
WITH r AS (
    DELETE FROM requests WHERE id = :id AND owner_key_id = :owner AND deleted_at IS NULL
    RETURNING id, batch_id
), b AS (
    DELETE FROM batches USING r
    WHERE batches.id = r.batch_id AND batches.kind = '{BatchKind.SINGLE}'
)
SELECT id FROM r
"""
)

FINAL_AMONG = text(f"SELECT id FROM requests WHERE id = ANY(:ids) AND status IN {sql_in(FINAL)}")


@dataclass(frozen=True, kw_only=True)
class Submission(NewRequest):
    """A flex or background request about to be accepted."""

    window_s: int
    priority: int
    pin: str | None = None  # x-tiergate-deployment
    # A streamed background Response's first events (a JSON array), stored with the row.
    events: str | None = None
    cache: str | None = None  # the gateway's cache miss or bypass (a CacheResult)
    traceparent: str | None = None  # the accepting span's, when tracing is on


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRow(FromRow):
    """A ``requests`` row as it is read back (``RequestStore.get``): what a Response object,
    a stored result or a blocking client's answer is built from. Rows that are not read back
    (a submission just accepted, a cache hit, a streamed attempt's Response) are built with
    the columns they have; the others keep their defaults."""

    id: str
    owner_key_id: str
    endpoint: str
    model: str
    service_tier: str
    status: str
    body: dict[str, Any]
    created_at: dt.datetime
    batch_id: str | None = None
    custom_id: str | None = None
    line_no: int | None = None
    background: bool = False
    stream: bool = False
    attempts: int = 0
    response_status: int | None = None
    response_body: Any = None
    error: dict[str, Any] | None = None
    attempt_errors: list[dict[str, Any]] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_estimated: bool = False
    cost_usd: Decimal | None = None
    job_id: int | None = None
    gateway_id: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    not_before: dt.datetime | None = None
    priority: int = 0
    deployment: str | None = None
    pinned_deployment: str | None = None
    claimed_by: str | None = None
    cache: str | None = None
    metadata: dict[str, str] | None = None  # set by POST /v1/chat/completions/{id}
    deleted_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ClaimedRequest(FromRow):
    """A row a worker claimed to run one attempt (a flex or background request, or a batch
    line: ``RequestStore.claim``, ``BatchStore.claim``), with its key's limits."""

    id: str
    endpoint: str
    model: str
    body: dict[str, Any]
    attempts: int  # this attempt's number: the fencing token of its writes
    expires_at: dt.datetime
    expired: bool
    deployment: str | None  # the previous attempt's (a retry avoids it)
    pinned_deployment: str | None
    service_tier: str
    background: bool
    stream: bool
    created_at: dt.datetime
    owner_key_id: str
    key_name: str | None
    rpm: int | None
    tpm: int | None
    cache: str | None
    cache_enabled: bool | None
    traceparent: str | None = None  # the trace it was accepted in (tracing on)


@dataclass(frozen=True)
class Finish:
    """The end of one attempt at a deferred request, to be stored with others."""

    id: str
    attempt: int
    outcome: Outcome


class RequestStore:
    """Deferred requests' life (submit, claim, finish, requeue, cancel, delete) and reads."""

    def __init__(self, engine: AsyncEngine, *, retention_days: int | None = None) -> None:
        """``retention_days``: a finished request older than this reads as gone (a 404)."""
        self.engine = engine
        self.retention_days = retention_days

    def _visible(self) -> ColumnElement[bool]:
        """Not deleted (DELETE /v1/chat/completions/{id}) and within the retention."""
        kept = requests.c.deleted_at.is_(None)
        if self.retention_days is None:
            return kept
        return and_(
            kept,
            or_(
                requests.c.status.in_([str(s) for s in LIVE]),
                requests.c.created_at >= func.now() - dt.timedelta(days=self.retention_days),
            ),
        )

    async def submit(self, sub: Submission) -> None:
        """Accept one request (see :meth:`submit_many`)."""
        await self.submit_many([sub])

    async def submit_many(self, subs: list[Submission]) -> None:
        """Accept many requests in one statement (all or none) and wake the workers."""
        async with self.engine.connect() as conn:
            await conn.execute(
                SUBMIT_MANY,
                {
                    **new_request_arrays(subs),
                    "windows_s": [s.window_s for s in subs],
                    "priorities": [s.priority for s in subs],
                    "pins": [s.pin for s in subs],
                    "events": [s.events for s in subs],
                    "caches": [s.cache for s in subs],
                    "traceparents": [s.traceparent for s in subs],
                },
            )

    async def claim(self, wanted: dict[str, int], worker: str) -> list[ClaimedRequest]:
        """Claim up to ``wanted[model]`` due requests of each model for ``worker``."""
        wanted = {model: n for model, n in wanted.items() if n > 0}
        if not wanted:
            return []
        params = {"models": list(wanted), "counts": list(wanted.values()), "worker": worker}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(CLAIM, params)).mappings()
            return [ClaimedRequest.from_row(row) for row in rows]

    async def finish_many(self, items: list[Finish]) -> list[str]:
        """Store the outcomes of many attempts; returns the ids stored (a row that moved on,
        cancelled or deleted meanwhile, is left as it is)."""
        columns = stored_arrays([i.outcome for i in items])
        params = {"ids": [i.id for i in items], "attempts": [i.attempt for i in items], **columns}
        async with self.engine.connect() as conn:
            return [row.id for row in await conn.execute(FINISH_MANY, params)]

    async def finish(self, id: str, attempt: int, outcome: Outcome) -> bool:
        """Store one outcome; False when the row moved on (cancelled, deleted)."""
        return bool(await self.finish_many([Finish(id, attempt, outcome)]))

    async def requeue(
        self,
        id: str,
        attempt: int,
        error: dict[str, Any],
        delay_s: float,
        *,
        deployment: str | None = None,
        counted: bool = True,
    ) -> bool:
        """Put a request back in the queue after a retryable failure, due in ``delay_s``.

        ``deployment`` failed it (the retry prefers another); an attempt that made no call
        (``counted=False``) is given back.
        """
        params = {
            "id": id,
            "attempt": attempt,
            "error": error,
            "delay_s": delay_s,
            "deployment": deployment,
            "refund": 0 if counted else 1,
        }
        async with self.engine.connect() as conn:
            return (await conn.execute(REQUEUE, params)).first() is not None

    async def promote_due(self) -> float | None:
        """Make retries whose backoff passed claimable (and wake the workers); returns the
        seconds until the next retry falls due, or None if none waits."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(PROMOTE_DUE)).one()
        return None if row.next_in_s is None else max(0.0, float(row.next_in_s))

    async def release(self, worker: str) -> list[str]:
        """Give the unfinished rows of ``worker`` back to the queue (it is stopping)."""
        async with self.engine.connect() as conn:
            return list((await conn.execute(RELEASE, {"worker": worker})).scalars())

    async def get(self, id: str, owner: str) -> RequestRow | None:
        """The row, if it exists and belongs to ``owner``."""
        query = select(requests).where(
            requests.c.id == id, requests.c.owner_key_id == owner, self._visible()
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else RequestRow.from_row(row)

    async def get_many(self, wanted: list[tuple[str, str]]) -> list[RequestRow | None]:
        """``get`` for many (id, owner) pairs in one query, in order (woken waiters read
        their answers together)."""
        query = select(requests).where(requests.c.id.in_({id for id, _ in wanted}), self._visible())
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings()
            found = {row.id: row for row in map(RequestRow.from_row, rows)}
        return [
            row if (row := found.get(id)) is not None and row.owner_key_id == owner else None
            for id, owner in wanted
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
