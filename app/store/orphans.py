"""The safety net for work whose job ended without finishing it.

A job can end while its rows are still live: it failed on an error that outlived every
retry (a database that went away while the job was writing its result), or an admin deleted
it. Nothing would ever run those rows again, so the sweep calls ``OrphanStore.requeue``:

- a live single request whose job is gone or final gets a new job, on the same queue;
- a batch line left ``in_progress`` by a job that is no longer running goes back to
  ``pending`` (any run job of its batch may claim it);
- a live batch with no live job of its own gets the job its state calls for: validation,
  a run job while lines are left, else finalization.

Every statement only looks at live rows and live jobs (small, indexed sets).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.batches import BATCH_QUEUE, FINALIZE_TASK, RUN_TASK, VALIDATE_TASK
from app.store.requests import RUN_REQUEST_TASK

LIVE_JOB = "j.status IN ('todo', 'doing')"

REQUEUE_REQUESTS = text(
    f"""
WITH orphans AS (
    SELECT r.id, coalesce(j.queue_name, CASE WHEN r.service_tier = 'flex' THEN 'flex'
                                             ELSE 'realtime' END) AS queue,
           coalesce(j.priority, 0) AS priority, row_number() OVER (ORDER BY r.id) AS n
    FROM requests r LEFT JOIN procrastinate_jobs j ON j.id = r.job_id
    WHERE r.status IN ('pending', 'in_progress') AND r.custom_id IS NULL
      AND r.job_id IS NOT NULL AND (j.id IS NULL OR NOT ({LIVE_JOB}))
    LIMIT 1000
), job AS (
    SELECT j.id, j.n FROM unnest(procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(o.queue, '{RUN_REQUEST_TASK}', o.priority, NULL, NULL,
                   jsonb_build_object('request_id', o.id), NULL)::procrastinate_job_to_defer_v1
        FROM orphans o ORDER BY o.n
    ))) WITH ORDINALITY AS j(id, n)
)
UPDATE requests r SET status = 'pending', job_id = job.id
FROM orphans o JOIN job ON job.n = o.n
WHERE r.id = o.id AND r.status IN ('pending', 'in_progress')
RETURNING r.id
"""
)

RELEASE_LINES = text(
    f"""
UPDATE requests r SET status = 'pending', job_id = NULL
WHERE r.custom_id IS NOT NULL AND r.status = 'in_progress'
  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.id = r.job_id AND {LIVE_JOB})
RETURNING r.id
"""
)

# Batches that are live but have no live job: nobody would move them on.
RESTART_BATCHES = text(
    f"""
WITH stranded AS (
    SELECT b.id,
           CASE WHEN b.status = 'validating' THEN '{VALIDATE_TASK}'
                WHEN b.status = 'in_progress' AND EXISTS (
                    SELECT 1 FROM requests r
                    WHERE r.batch_id = b.id AND r.status IN ('pending', 'in_progress'))
                THEN '{RUN_TASK}'
                ELSE '{FINALIZE_TASK}' END AS task
    FROM batches b
    WHERE b.kind = 'file' AND b.status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_jobs j
          WHERE {LIVE_JOB} AND j.queue_name = '{BATCH_QUEUE}' AND j.args->>'batch_id' = b.id)
)
SELECT s.id, s.task, procrastinate_defer_jobs_v1(ARRAY[ROW(
    '{BATCH_QUEUE}', s.task, 0,
    CASE WHEN s.task = '{FINALIZE_TASK}' THEN 'finalize:' || s.id END, NULL,
    jsonb_build_object('batch_id', s.id), NULL)::procrastinate_job_to_defer_v1]) AS job
FROM stranded s
"""
)


@dataclass(frozen=True)
class Requeued:
    """What one pass of the safety net put back to work."""

    requests: list[str]
    lines: list[str]
    batches: list[str]

    def __bool__(self) -> bool:
        return bool(self.requests or self.lines or self.batches)


class OrphanStore:
    """Finds live work that no live job will ever run, and queues it again."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def requeue(self) -> Requeued:
        async with self.engine.connect() as conn:
            requests = list((await conn.execute(REQUEUE_REQUESTS)).scalars())
            lines = list((await conn.execute(RELEASE_LINES)).scalars())
            batches = [row.id for row in await conn.execute(RESTART_BATCHES)]
        return Requeued(requests, lines, batches)
