"""SQL for Batch API batches and their lines (``requests`` rows with a ``batch_id``).

The ``requests`` table is the queue of lines: a job claims a chunk of pending lines with
``FOR UPDATE SKIP LOCKED``, runs them concurrently and writes the results back with one
statement per chunk. ``job_id`` on a line names the job that claimed it, so a job rescued
from a dead worker (same job id) takes its own unfinished lines back.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Integer, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.limits import add_spend
from app.store.outcomes import (
    STORE_OUTCOMES,
    Ended,
    Outcome,
    attempt_error,
    ended_columns,
    stored_arrays,
)
from app.store.requests import ClaimedRequest
from app.store.rows import FromRow
from app.vocabulary import (
    CLOSABLE_BATCH,
    LIVE,
    UNSUCCESSFUL,
    BatchKind,
    BatchStatus,
    ErrorCode,
    FileStatus,
    Priority,
    Queue,
    Status,
    Task,
    sql_error,
    sql_in,
)

COPY_COLUMNS = (
    "id", "batch_id", "owner_key_id", "custom_id", "line_no", "endpoint", "model",
    "service_tier", "status", "body", "expires_at",
)  # fmt: skip


def defer_job(task: str, batch_sql: str, *, locked: bool = False) -> str:
    """SQL calling procrastinate's defer function for one job about batch ``batch_sql``.

    ``locked`` jobs of the same batch run one at a time (procrastinate's ``lock``).
    """
    lock = f"'finalize:' || {batch_sql}" if locked else "NULL"
    return (
        f"procrastinate_defer_jobs_v1(ARRAY[ROW('{Queue.BATCH}', '{task}', {Priority.BATCH},"
        f" {lock}, NULL, jsonb_build_object('batch_id', {batch_sql}), NULL)"
        "::procrastinate_job_to_defer_v1])"
    )


CREATE = text(
    f"""
WITH job AS (
    SELECT unnest({defer_job(Task.VALIDATE_BATCH, "CAST(:id AS text)")}) AS id
)
INSERT INTO batches (id, owner_key_id, kind, endpoint, status, completion_window,
                     input_file_id, metadata, expires_at, traceparent)
SELECT :id, :owner, '{BatchKind.FILE}', :endpoint, '{BatchStatus.VALIDATING}', :window,
       :file_id, :metadata, now() + make_interval(secs => :window_s), :traceparent
FROM job
"""
).bindparams(bindparam("metadata", type_=JSONB), bindparam("window_s", type_=Integer))

# Live counts for running batches; frozen counts once a batch has ended. The model is its
# first line's (one model per batch; none before validation has stored the lines).
BATCH_COLUMNS = """
b.*, coalesce(b.completed_count, c.completed) AS completed,
coalesce(b.failed_count, c.failed) AS failed,
(SELECT r.model FROM requests r WHERE r.batch_id = b.id ORDER BY r.line_no LIMIT 1) AS model
"""
COUNTS = f"""
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE r.status = '{Status.COMPLETED}') AS completed,
           count(*) FILTER (WHERE r.status IN {sql_in(UNSUCCESSFUL)}) AS failed
    FROM requests r WHERE r.batch_id = b.id
) c ON true
"""
GET = text(
    f"SELECT {BATCH_COLUMNS} FROM batches b {COUNTS}"
    f" WHERE b.id = :id AND b.owner_key_id = :owner AND b.kind = '{BatchKind.FILE}'"
)
LIST = text(
    f"""
SELECT {BATCH_COLUMNS} FROM batches b {COUNTS}
WHERE b.owner_key_id = :owner AND b.kind = '{BatchKind.FILE}'
  AND (CAST(:after AS text) IS NULL OR (b.created_at, b.id) < (
        SELECT created_at, id FROM batches WHERE id = :after AND owner_key_id = :owner))
ORDER BY b.created_at DESC, b.id DESC
LIMIT :limit
"""
)
CANCEL = text(
    f"""
WITH b AS (
    UPDATE batches SET status = '{BatchStatus.CANCELLING}', cancelling_at = now()
    WHERE id = :id AND owner_key_id = :owner AND kind = '{BatchKind.FILE}'
      AND status IN {sql_in([BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS])}
    RETURNING id
), lines AS (
    UPDATE requests SET status = '{Status.CANCELLED}', finished_at = now(),
        error = {sql_error(ErrorCode.BATCH_CANCELLED)}
    WHERE batch_id IN (SELECT id FROM b) AND status = '{Status.PENDING}'
    RETURNING id
)
SELECT (SELECT count(*) FROM lines) AS cancelled,
       {defer_job(Task.FINALIZE_BATCH, "b.id", locked=True)} AS job
FROM b
"""
)

# --- worker side -------------------------------------------------------------------------

TRACEPARENT = text("SELECT traceparent FROM batches WHERE id = :id")
FOR_VALIDATION = text(
    "SELECT id, owner_key_id, endpoint, input_file_id, expires_at, status FROM batches"
    f" WHERE id = :id AND kind = '{BatchKind.FILE}'"
)
FAIL_VALIDATION = text(
    f"""
UPDATE batches SET status = '{BatchStatus.FAILED}', failed_at = now(), errors = :errors,
    completed_count = 0, failed_count = 0
WHERE id = :id AND status = '{BatchStatus.VALIDATING}'
"""
).bindparams(bindparam("errors", type_=JSONB))
START = text(
    f"""
WITH b AS (
    UPDATE batches SET status = '{BatchStatus.IN_PROGRESS}', in_progress_at = now(), total = :total
    WHERE id = :id AND status = '{BatchStatus.VALIDATING}'
    RETURNING id
)
SELECT unnest({defer_job(Task.RUN_BATCH, "b.id")}) AS job
FROM b, generate_series(1, :jobs)
"""
).bindparams(bindparam("jobs", type_=Integer), bindparam("total", type_=Integer))
LOCK_FOR_START = text("SELECT status FROM batches WHERE id = :id FOR UPDATE")
CANCELLED_WHILE_VALIDATING = text(
    f"""
UPDATE batches SET status = '{BatchStatus.CANCELLED}', cancelled_at = now(),
    completed_count = 0, failed_count = 0
WHERE id = :id AND status = '{BatchStatus.CANCELLING}'
"""
)

# A run job claims pending lines that are due, in input order, over the partial index of
# pending lines (finished lines are never walked; ``id = ANY(ARRAY(...))`` keeps the update
# on the primary key whatever the planner guesses of the LIMIT) ...
CLAIM = text(
    f"""
UPDATE requests AS r
SET status = '{Status.IN_PROGRESS}', attempts = r.attempts + 1,
    started_at = coalesce(r.started_at, now()), job_id = :job
WHERE r.status = '{Status.PENDING}' AND r.id = ANY(ARRAY(
    SELECT id FROM requests
    WHERE batch_id = :batch AND status = '{Status.PENDING}'
      AND (not_before IS NULL OR not_before <= now())
    ORDER BY line_no
    LIMIT :n
    FOR UPDATE SKIP LOCKED
))
RETURNING r.id, r.model, r.endpoint, r.body, r.attempts, r.expires_at,
          r.expires_at < now() AS expired, r.deployment, r.owner_key_id,
          (SELECT k.name FROM api_keys k WHERE k.id = r.owner_key_id) AS key_name,
          (SELECT k.rpm FROM api_keys k WHERE k.id = r.owner_key_id) AS rpm,
          (SELECT k.tpm FROM api_keys k WHERE k.id = r.owner_key_id) AS tpm,
          (SELECT k.cache_enabled FROM api_keys k WHERE k.id = r.owner_key_id) AS cache_enabled,
          r.cache, r.pinned_deployment, r.service_tier, r.background, r.stream, r.created_at,
          NULL AS traceparent  -- a batch line is not a trace of its own
"""
).bindparams(bindparam("job", type_=BigInteger), bindparam("n", type_=Integer))
# ... and, when it starts, takes back the lines it had claimed in a run that died (a job
# rescued from a dead worker keeps its id).
RESUME = text(
    f"""
UPDATE requests AS r
SET attempts = r.attempts + 1
WHERE r.id = ANY(ARRAY(
    SELECT id FROM requests
    WHERE batch_id = :batch AND status = '{Status.IN_PROGRESS}' AND job_id = :job
      AND upstream_job_id IS NULL  -- held by a provider job: its poller finishes it
    ORDER BY line_no
    LIMIT :n
    FOR UPDATE SKIP LOCKED
))
RETURNING r.id, r.model, r.endpoint, r.body, r.attempts, r.expires_at,
          r.expires_at < now() AS expired, r.deployment, r.owner_key_id,
          (SELECT k.name FROM api_keys k WHERE k.id = r.owner_key_id) AS key_name,
          (SELECT k.rpm FROM api_keys k WHERE k.id = r.owner_key_id) AS rpm,
          (SELECT k.tpm FROM api_keys k WHERE k.id = r.owner_key_id) AS tpm,
          (SELECT k.cache_enabled FROM api_keys k WHERE k.id = r.owner_key_id) AS cache_enabled,
          r.cache, r.pinned_deployment, r.service_tier, r.background, r.stream, r.created_at,
          NULL AS traceparent  -- a batch line is not a trace of its own
"""
).bindparams(bindparam("job", type_=BigInteger), bindparam("n", type_=Integer))
BATCH_MODEL = text("SELECT model FROM requests WHERE batch_id = :batch LIMIT 1")

# Results of a chunk of lines, and their usage and cost added to their batch's running totals
# (a Batch read never sums its lines). Only rows actually stored count; their ids are returned.
FINISH_MANY = text(
    f"""
WITH done AS ({STORE_OUTCOMES}
    RETURNING r.id, r.batch_id, r.input_tokens, r.cached_tokens, r.output_tokens,
              r.reasoning_tokens, r.total_tokens, r.cost_usd, r.owner_key_id
), spent AS ({add_spend("done")} RETURNING 1
), sums AS (
    SELECT batch_id, sum(input_tokens) AS input_tokens, sum(cached_tokens) AS cached_tokens,
           sum(output_tokens) AS output_tokens, sum(reasoning_tokens) AS reasoning_tokens,
           sum(total_tokens) AS total_tokens, sum(cost_usd) AS cost_usd
    FROM done WHERE total_tokens IS NOT NULL GROUP BY batch_id
), locked AS (
    -- Batch rows locked in id order: flushes naming the same batches cannot deadlock.
    SELECT id FROM batches WHERE id IN (SELECT batch_id FROM sums) ORDER BY id FOR UPDATE
), summed AS (
    UPDATE batches AS b
    SET input_tokens = coalesce(b.input_tokens, 0) + coalesce(s.input_tokens, 0),
        cached_tokens = coalesce(b.cached_tokens, 0) + coalesce(s.cached_tokens, 0),
        output_tokens = coalesce(b.output_tokens, 0) + coalesce(s.output_tokens, 0),
        reasoning_tokens = coalesce(b.reasoning_tokens, 0) + coalesce(s.reasoning_tokens, 0),
        total_tokens = coalesce(b.total_tokens, 0) + s.total_tokens,
        cost_usd = CASE WHEN s.cost_usd IS NULL THEN b.cost_usd
                        ELSE coalesce(b.cost_usd, 0) + s.cost_usd END
    FROM sums s WHERE b.id = s.batch_id AND b.id IN (SELECT id FROM locked)
    RETURNING 1
)
SELECT id FROM done
"""
)
REQUEUE_MANY = text(
    f"""
UPDATE requests AS r
SET status = '{Status.PENDING}', error = CAST(u.error AS jsonb),
    not_before = now() + make_interval(secs => u.delay_s),
    deployment = coalesce(u.deployment, r.deployment), attempts = r.attempts - u.refund,
    attempt_errors = {attempt_error("u.refund", "CAST(u.error AS jsonb)", "u.deployment", "r.")}
FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[]), CAST(:errors AS text[]),
            CAST(:delays AS float8[]), CAST(:deployments AS text[]), CAST(:refunds AS int[]))
     AS u(id, attempt, error, delay_s, deployment, refund)
WHERE r.id = u.id AND r.status = '{Status.IN_PROGRESS}' AND r.attempts = u.attempt
"""
)
PROGRESS = text(
    f"""
SELECT count(*) FILTER (WHERE status = '{Status.IN_PROGRESS}') AS running,
       count(*) FILTER (WHERE status = '{Status.PENDING}') AS pending,
       extract(epoch FROM min(not_before) FILTER (WHERE status = '{Status.PENDING}') - now())
           AS next_in_s
FROM requests WHERE batch_id = :batch
"""
)
DEFER_FINALIZE = text(
    f"SELECT {defer_job(Task.FINALIZE_BATCH, 'CAST(:batch AS text)', locked=True)}"
)

FOR_FINALIZE = text(
    f"""
SELECT b.id, b.owner_key_id, b.status,
       EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = b.id
               AND r.status = '{Status.EXPIRED}') AS expired,
       EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = b.id
               AND r.status IN {sql_in(LIVE)}) AS live
FROM batches b WHERE b.id = :id AND b.kind = '{BatchKind.FILE}'
"""
)
MARK_FINALIZING = text(
    f"UPDATE batches SET status = '{BatchStatus.FINALIZING}', finalizing_at = now()"
    f" WHERE id = :id AND status = '{Status.IN_PROGRESS}'"
)
# Bodies come back as JSON text and are spliced into result lines without re-encoding.
RESULT_PAGE = text(
    """
SELECT id, custom_id, line_no, status, response_status,
       CAST(response_body AS text) AS response_body, error
FROM requests WHERE batch_id = :batch AND line_no > :after
ORDER BY line_no LIMIT :n
"""
).columns(error=JSONB)
# The batch's end and its files become visible together.
CLOSE = text(
    f"""
WITH counts AS (
    SELECT count(*) FILTER (WHERE status = '{Status.COMPLETED}') AS completed,
           count(*) FILTER (WHERE status IN {sql_in(UNSUCCESSFUL)}) AS failed
    FROM requests WHERE batch_id = :id
), b AS (
    UPDATE batches SET status = :status, output_file_id = :output_file_id,
        error_file_id = :error_file_id,
        completed_count = (SELECT completed FROM counts),
        failed_count = (SELECT failed FROM counts),
        completed_at = CASE WHEN :status = '{BatchStatus.COMPLETED}' THEN now() END,
        expired_at = CASE WHEN :status = '{BatchStatus.EXPIRED}' THEN now() END,
        cancelled_at = CASE WHEN :status = '{BatchStatus.CANCELLED}' THEN now() END
    WHERE id = :id AND status IN {sql_in(CLOSABLE_BATCH)}
    RETURNING id
)
UPDATE files SET status = '{FileStatus.PROCESSED}'
WHERE id IN (:output_file_id, :error_file_id) AND EXISTS (SELECT 1 FROM b)
RETURNING id
"""
)
STATUS = text("SELECT status FROM batches WHERE id = :id")

# Batches past their window: their queued lines expire, then the batch is finalized. A row per
# batch to finalize (its ``id``), then the expired lines counted by model and path (``rows``).
EXPIRE = text(
    f"""
WITH overdue AS (
    SELECT id FROM batches
    WHERE kind = '{BatchKind.FILE}' AND expires_at < now()
      AND status IN {sql_in([BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS])}
), lines AS (
    UPDATE requests SET status = '{Status.EXPIRED}', finished_at = now(),
        error = {sql_error(ErrorCode.BATCH_EXPIRED)}
    WHERE batch_id IN (SELECT id FROM overdue) AND status = '{Status.PENDING}'
    RETURNING {ended_columns()}
), never_started AS (
    UPDATE batches SET status = '{BatchStatus.EXPIRED}', expired_at = now(),
        completed_count = 0, failed_count = 0
    WHERE id IN (SELECT id FROM overdue) AND status = '{BatchStatus.VALIDATING}'
    RETURNING id
)
SELECT o.id, {defer_job(Task.FINALIZE_BATCH, "o.id", locked=True)} AS job,
       NULL AS model, NULL AS tier, NULL AS executor, 0 AS rows
FROM overdue o WHERE o.id NOT IN (SELECT id FROM never_started)
UNION ALL
SELECT NULL, NULL, model, tier, executor, count(*) FROM lines GROUP BY model, tier, executor
"""
)


@dataclass(frozen=True, slots=True)
class BatchRow(FromRow):
    """A Batch API batch as its owner reads it (``BatchStore.get``, ``page``): counts live
    while it runs, frozen once it ended; the model of its lines."""

    id: str
    owner_key_id: str
    kind: str
    endpoint: str
    status: str
    completion_window: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    errors: dict[str, Any] | None
    metadata: dict[str, str] | None
    total: int
    completed: int | None
    failed: int | None
    model: str | None
    created_at: dt.datetime
    expires_at: dt.datetime
    in_progress_at: dt.datetime | None
    finalizing_at: dt.datetime | None
    completed_at: dt.datetime | None
    failed_at: dt.datetime | None
    expired_at: dt.datetime | None
    cancelling_at: dt.datetime | None
    cancelled_at: dt.datetime | None
    input_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    total_tokens: int | None
    cost_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class BatchToValidate(FromRow):
    """What validating a batch's input file needs of the batch."""

    id: str
    owner_key_id: str
    endpoint: str
    input_file_id: str
    expires_at: dt.datetime
    status: str


@dataclass(frozen=True, slots=True)
class BatchToFinalize(FromRow):
    """What finalizing a batch needs: whether lines still run, whether some expired."""

    id: str
    owner_key_id: str
    status: str
    expired: bool
    live: bool


@dataclass(frozen=True, slots=True)
class BatchProgress(FromRow):
    """A run job's view of its batch: lines running, lines waiting, the next retry."""

    running: int
    pending: int
    next_in_s: Decimal | float | None


@dataclass(frozen=True, slots=True)
class ResultLine(FromRow):
    """A line as the result files show it; ``response_body`` is JSON text, spliced in as
    it is."""

    id: str
    custom_id: str
    line_no: int
    status: str
    response_status: int | None
    response_body: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class LineResult:
    """The end of one attempt at one line: an outcome to store, or a retry delay."""

    id: str
    attempt: int
    outcome: Outcome | None = None
    retry_in_s: float | None = None
    error: dict[str, Any] | None = None
    deployment: str | None = None  # the one called (a retry prefers another)
    counted: bool = True  # False: no call was made (no deployment could take it)


@dataclass(frozen=True)
class ExpiredBatches:
    """What the expiry of overdue batches did: the batches it finalizes, and the lines it
    expired (by model and path)."""

    batches: list[str]
    lines: list[Ended]


class BatchStore:
    """All SQL touching Batch API batches."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Multi-statement work (validation's COPY) needs real transactions.
        self.transactional = engine.execution_options(isolation_level="READ COMMITTED")

    async def create(
        self,
        *,
        id: str,
        owner: str,
        endpoint: str,
        window: str,
        window_s: int,
        file_id: str,
        metadata: dict[str, str] | None,
        traceparent: str | None = None,
    ) -> None:
        """Insert the batch and its validation job in one statement (``traceparent``: the
        creating span's, whose trace the batch's jobs continue)."""
        async with self.engine.connect() as conn:
            await conn.execute(
                CREATE,
                {
                    "id": id,
                    "owner": owner,
                    "endpoint": endpoint,
                    "window": window,
                    "window_s": window_s,
                    "file_id": file_id,
                    "metadata": metadata,
                    "traceparent": traceparent,
                },
            )

    async def traceparent(self, id: str) -> str | None:
        """The trace the batch was created in (tracing on; None otherwise)."""
        async with self.engine.connect() as conn:
            found: str | None = (await conn.execute(TRACEPARENT, {"id": id})).scalar()
            return found

    async def get(self, id: str, owner: str) -> BatchRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(GET, {"id": id, "owner": owner})).mappings().first()
        return None if row is None else BatchRow.from_row(row)

    async def page(self, owner: str, *, after: str | None, limit: int) -> list[BatchRow]:
        async with self.engine.connect() as conn:
            params = {"owner": owner, "after": after, "limit": limit}
            return [BatchRow.from_row(row) for row in (await conn.execute(LIST, params)).mappings()]

    async def cancel(self, id: str, owner: str) -> bool:
        async with self.engine.connect() as conn:
            return (await conn.execute(CANCEL, {"id": id, "owner": owner})).first() is not None

    # --- validation ----------------------------------------------------------------------

    async def for_validation(self, id: str) -> BatchToValidate | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(FOR_VALIDATION, {"id": id})).mappings().first()
        return None if row is None else BatchToValidate.from_row(row)

    async def fail_validation(self, id: str, errors: list[dict[str, Any]]) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(
                FAIL_VALIDATION, {"id": id, "errors": {"object": "list", "data": errors}}
            )
            await conn.execute(CANCELLED_WHILE_VALIDATING, {"id": id})

    async def start(self, id: str, records: list[tuple[Any, ...]], jobs: int) -> bool:
        """COPY the lines in, mark the batch in_progress and defer its run jobs: one
        transaction. False if the batch left 'validating' meanwhile (a cancel)."""
        async with self.transactional.begin() as conn:
            # This statement also opens the transaction on the driver connection (the asyncpg
            # adapter begins lazily), so the COPY below is part of it; and the row lock makes
            # a concurrent cancel wait for us, then see 'in_progress'.
            status = (await conn.execute(LOCK_FOR_START, {"id": id})).scalar_one_or_none()
            started = None
            if status == BatchStatus.VALIDATING:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                    "requests", records=records, columns=COPY_COLUMNS
                )
                started = (
                    await conn.execute(START, {"id": id, "total": len(records), "jobs": jobs})
                ).first()
        if started is None:
            async with self.engine.connect() as conn:
                await conn.execute(CANCELLED_WHILE_VALIDATING, {"id": id})
            return False
        return True

    # --- running ------------------------------------------------------------------------

    async def claim(
        self, batch: str, job: int, n: int, *, resume: bool = False
    ) -> list[ClaimedRequest]:
        """Claim up to ``n`` due pending lines for ``job``; with ``resume``, first the lines
        this job had claimed in a run that died."""
        params = {"batch": batch, "job": job, "n": n}
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(RESUME, params)).mappings()) if resume else []
            if len(rows) < n:
                params["n"] = n - len(rows)
                rows += (await conn.execute(CLAIM, params)).mappings()
        return [ClaimedRequest.from_row(row) for row in rows]

    async def model(self, batch: str) -> str | None:
        """The model of a batch's lines (one per batch)."""
        async with self.engine.connect() as conn:
            model: str | None = (await conn.execute(BATCH_MODEL, {"batch": batch})).scalar()
            return model

    async def record(self, results: list[LineResult]) -> list[bool]:
        """Store finished lines and requeue retryable ones: at most two statements. Returns,
        for each result, whether it stored a final outcome (False: a retry, or a line that
        moved on meanwhile)."""
        done = [r for r in results if r.outcome is not None]
        again = [r for r in results if r.retry_in_s is not None]
        stored: set[str] = set()
        async with self.engine.connect() as conn:
            if done:
                outcomes = [r.outcome for r in done if r.outcome is not None]
                params = {
                    "ids": [r.id for r in done],
                    "attempts": [r.attempt for r in done],
                    **stored_arrays(outcomes),
                }
                stored = set((await conn.execute(FINISH_MANY, params)).scalars())
            if again:
                await conn.execute(
                    REQUEUE_MANY,
                    {
                        "ids": [r.id for r in again],
                        "attempts": [r.attempt for r in again],
                        "errors": [_json(r.error) for r in again],
                        "delays": [r.retry_in_s for r in again],
                        "deployments": [r.deployment for r in again],
                        "refunds": [0 if r.counted else 1 for r in again],
                    },
                )
        return [r.outcome is not None and r.id in stored for r in results]

    async def progress(self, batch: str) -> BatchProgress:
        async with self.engine.connect() as conn:
            return BatchProgress.from_row(
                (await conn.execute(PROGRESS, {"batch": batch})).mappings().one()
            )

    async def defer_finalize(self, batch: str) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(DEFER_FINALIZE, {"batch": batch})

    # --- finalizing ---------------------------------------------------------------------

    async def for_finalize(self, id: str) -> BatchToFinalize | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(FOR_FINALIZE, {"id": id})).mappings().first()
            row = None if found is None else BatchToFinalize.from_row(found)
            if row is not None and row.status == BatchStatus.IN_PROGRESS and not row.live:
                await conn.execute(MARK_FINALIZING, {"id": id})
            return row

    async def result_pages(self, batch: str, page: int = 2000) -> AsyncIterator[list[ResultLine]]:
        """All lines of a batch in input order, a page at a time."""
        after = 0
        while True:
            async with self.engine.connect() as conn:
                params = {"batch": batch, "after": after, "n": page}
                rows = (await conn.execute(RESULT_PAGE, params)).mappings()
                lines = [ResultLine.from_row(row) for row in rows]
            if not lines:
                return
            yield lines
            after = lines[-1].line_no

    async def close(
        self, id: str, status: str, output_file_id: str | None, error_file_id: str | None
    ) -> str:
        """End the batch and publish its files together; returns the batch's status."""
        async with self.engine.connect() as conn:
            await conn.execute(
                CLOSE,
                {
                    "id": id,
                    "status": status,
                    "output_file_id": output_file_id,
                    "error_file_id": error_file_id,
                },
            )
            final: str = (await conn.execute(STATUS, {"id": id})).scalar_one()
            return final

    async def status(self, id: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(STATUS, {"id": id})).scalar_one_or_none()

    async def expire_overdue(self) -> ExpiredBatches:
        """Expire the queued lines of batches past their window and finalize the batches."""
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(EXPIRE)).mappings())
        return ExpiredBatches(
            batches=[r["id"] for r in rows if r["id"] is not None],
            lines=[Ended.from_row(r) for r in rows if r["id"] is None],
        )


def _json(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, separators=(",", ":"))
