"""The safety net for work whose job ended without finishing it.

A job can end while its rows are still live: it failed on an error that outlived every
retry (a database that went away while the job was writing its result), or an admin deleted
it. Nothing would ever run those rows again, so the sweep calls ``OrphanStore.requeue``:

- a batch line left ``in_progress`` by a job that is no longer running goes back to
  ``pending`` (any run job of its batch may claim it), unless a provider's Batch API job
  holds it (``upstream_job_id``: that job's poller finishes it);
- a live batch with no live job of its own gets the job its state calls for: validation,
  a run job while lines are left, else finalization.

A job that fails every time (a bug, input that crashes the worker) must not loop forever:
a line that has already been run ``MAX_RUNS`` times, or a batch whose jobs have failed
``MAX_RUNS`` times, ends ``failed`` with ``processing_failed`` instead. (Single requests have
no job: the sweep gives the rows of a dead worker back, see ``sweeps.py``.)

Every statement only looks at live rows and live jobs (small, indexed sets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.outcomes import Ended, ended_columns
from app.vocabulary import (
    LIVE,
    LIVE_BATCH,
    BatchKind,
    BatchStatus,
    ErrorCode,
    Priority,
    Queue,
    Status,
    Task,
    sql_error,
    sql_in,
)

LIVE_JOB = "j.status IN ('todo', 'doing')"
MAX_RUNS = 10
GAVE_UP = sql_error(ErrorCode.PROCESSING_FAILED)

RELEASE_LINES = text(
    f"""
UPDATE requests r
SET status = CASE WHEN r.attempts < {MAX_RUNS} THEN '{Status.PENDING}' ELSE '{Status.FAILED}' END,
    job_id = NULL,
    finished_at = CASE WHEN r.attempts < {MAX_RUNS} THEN NULL ELSE now() END,
    error = CASE WHEN r.attempts < {MAX_RUNS} THEN r.error ELSE {GAVE_UP} END
WHERE r.custom_id IS NOT NULL AND r.status = '{Status.IN_PROGRESS}'
  AND r.upstream_job_id IS NULL  -- a provider job holds it: its poller finishes it
  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.id = r.job_id AND {LIVE_JOB})
RETURNING r.status, {ended_columns("r.")}
"""
)

# Batches that are live but have no live job: nobody would move them on. After MAX_RUNS
# failed jobs a batch gives up: it fails, and so do its unfinished lines.
RESTART_BATCHES = text(
    f"""
WITH stranded AS (
    SELECT b.id,
           CASE WHEN b.status = '{BatchStatus.VALIDATING}' THEN '{Task.VALIDATE_BATCH}'
                WHEN b.status = '{BatchStatus.IN_PROGRESS}' AND EXISTS (
                    SELECT 1 FROM requests r
                    WHERE r.batch_id = b.id AND r.status IN {sql_in(LIVE)}
                      AND r.upstream_job_id IS NULL)
                THEN '{Task.RUN_BATCH}'
                -- live lines held by provider jobs only (running, or cancelling): their
                -- pollers move the batch on
                WHEN b.status IN {sql_in([BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING])}
                     AND EXISTS (
                    SELECT 1 FROM requests r
                    WHERE r.batch_id = b.id AND r.status IN {sql_in(LIVE)}
                      AND r.upstream_job_id IS NOT NULL)
                     AND NOT EXISTS (
                    SELECT 1 FROM requests r
                    WHERE r.batch_id = b.id AND r.status IN {sql_in(LIVE)}
                      AND r.upstream_job_id IS NULL)
                THEN NULL
                ELSE '{Task.FINALIZE_BATCH}' END AS task,
           (SELECT count(*) FROM procrastinate_jobs j
            WHERE j.queue_name = '{Queue.BATCH}' AND j.status = 'failed'
              AND j.args->>'batch_id' = b.id) >= {MAX_RUNS} AS give_up
    FROM batches b
    WHERE b.kind = '{BatchKind.FILE}' AND b.status IN {sql_in(LIVE_BATCH)}
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_jobs j
          WHERE {LIVE_JOB} AND j.queue_name = '{Queue.BATCH}' AND j.args->>'batch_id' = b.id)
), failed_batches AS (
    UPDATE batches b SET status = '{BatchStatus.FAILED}', failed_at = now(),
        errors = jsonb_build_object('object', 'list', 'data', jsonb_build_array({GAVE_UP}))
    FROM stranded s WHERE b.id = s.id AND s.give_up
    RETURNING b.id
), failed_lines AS (
    UPDATE requests r SET status = '{Status.FAILED}', finished_at = now(), error = {GAVE_UP}
    FROM failed_batches f WHERE r.batch_id = f.id AND r.status IN {sql_in(LIVE)}
    RETURNING {ended_columns("r.")}
)
SELECT s.id, s.task, procrastinate_defer_jobs_v1(ARRAY[ROW(
    '{Queue.BATCH}', s.task, {Priority.BATCH},
    CASE WHEN s.task = '{Task.FINALIZE_BATCH}' THEN 'finalize:' || s.id END, NULL,
    jsonb_build_object('batch_id', s.id), NULL)::procrastinate_job_to_defer_v1]) AS job,
    NULL AS model, NULL AS tier, NULL AS executor, 0 AS rows
FROM stranded s WHERE NOT s.give_up AND s.task IS NOT NULL
UNION ALL  -- the lines of the batches given up, counted by model and path
SELECT NULL, NULL, NULL, model, tier, executor, count(*) FROM failed_lines
GROUP BY model, tier, executor
"""
)


@dataclass(frozen=True)
class Requeued:
    """What one pass of the safety net put back to work."""

    lines: list[str]
    batches: list[str]
    failed: list[Ended] = field(default_factory=list)  # lines given up (``failed``)

    def __bool__(self) -> bool:
        return bool(self.lines or self.batches)


class OrphanStore:
    """Finds live work that no live job will ever run, and queues it again."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def requeue(self) -> Requeued:
        """Put orphaned batch lines and stranded batches back to work (see above)."""
        async with self.engine.connect() as conn:
            lines = list((await conn.execute(RELEASE_LINES)).mappings())
            batches = list((await conn.execute(RESTART_BATCHES)).mappings())
        failed = [Ended.from_row(r) for r in lines if r["status"] == Status.FAILED]
        return Requeued(
            lines=[r["id"] for r in lines],
            batches=[r["id"] for r in batches if r["id"] is not None],
            failed=failed + [Ended.from_row(r) for r in batches if r["id"] is None],
        )
