"""SQL for providers' Batch API jobs (``upstream_jobs``) and the rows they hold.

Never lose, never double:

- rows are attached to a job (``requests.upstream_job_id``) in the same statement that
  inserts the job's row, before anything is uploaded; only rows still ``in_progress`` at the
  attempt their worker claimed are attached, so a row given back meanwhile is not sent;
- the sweeps leave attached rows alone (a dead worker's job is taken over whole, by the
  poller of another process: ``owner`` names the process, its heartbeat says if it lives);
- a job's results are stored with the fencing of every result (status and attempt), and the
  job is marked ended in the same transaction, so a poller that dies halfway does it again
  without harm.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import jsontext
from app.store import batches, requests
from app.store.outcomes import Outcome, attempt_error, stored_arrays
from app.store.rows import FromRow
from app.vocabulary import (
    LIVE,
    STOPPING_BATCH,
    Channel,
    ExecutorKind,
    Status,
    Task,
    UpstreamJobStatus,
    sql_in,
)

# How long the process that attaches rows has to submit their job before its own poller
# looks at it again (another process takes it over as soon as this one falls silent).
SUBMIT_GRACE_S = 900.0
ATTACH = text(
    f"""
WITH attached AS (
    UPDATE requests AS r SET upstream_job_id = :job, executor = '{ExecutorKind.BATCH}'
    FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[])) AS u(id, attempt)
    WHERE r.id = u.id AND r.attempts = u.attempt AND r.status = '{Status.IN_PROGRESS}'
      AND r.upstream_job_id IS NULL
    RETURNING r.id, r.attempts
), job AS (
    INSERT INTO upstream_jobs (id, model, deployment, api, endpoint, status, rows, owner,
                               next_poll_at)
    SELECT :job, :model, :deployment, :api, :endpoint, '{UpstreamJobStatus.SUBMITTING}',
           count(*), :owner, now() + make_interval(secs => :grace_s)
    FROM attached HAVING count(*) > 0
)
SELECT id, attempts FROM attached
"""
).bindparams(bindparam("grace_s", type_=Float))
UPLOADED = text("UPDATE upstream_jobs SET upstream_file_id = :file WHERE id = :job")
SUBMITTED = text(
    f"""
UPDATE upstream_jobs SET upstream_batch_id = :batch, upstream_status = :status,
    status = '{UpstreamJobStatus.RUNNING}', submitted_at = now(), last_error = NULL,
    next_poll_at = now() + make_interval(secs => :in_s)
WHERE id = :job AND status = '{UpstreamJobStatus.SUBMITTING}'
"""
).bindparams(bindparam("in_s", type_=Float))
# Due jobs of this process; and those of a process that fell silent, due or not (one it was
# still submitting is taken over at once).
CLAIM_DUE = text(
    f"""
UPDATE upstream_jobs AS j SET owner = :me
WHERE j.id = ANY(ARRAY(
    SELECT u.id FROM upstream_jobs u LEFT JOIN processes p ON p.id = u.owner
    WHERE u.status <> '{UpstreamJobStatus.ENDED}'
      AND CASE WHEN u.owner = :me THEN u.next_poll_at <= now()
               ELSE u.owner IS NULL OR p.id IS NULL
                    OR p.last_seen_at < now() - make_interval(secs => :silent_s) END
    ORDER BY u.next_poll_at
    LIMIT :n
    FOR UPDATE OF u SKIP LOCKED
))
RETURNING j.id, j.model, j.deployment, j.api, j.endpoint, j.status, j.rows,
          j.upstream_file_id, j.upstream_batch_id, j.upstream_status, j.polls, j.created_at
"""
).bindparams(bindparam("silent_s", type_=Integer), bindparam("n", type_=Integer))
# Provider job ids that tiergate jobs of a deployment created since a time hold.
PROVIDER_IDS = text(
    "SELECT upstream_batch_id FROM upstream_jobs WHERE deployment = :deployment"
    " AND created_at >= CAST(:since AS timestamptz) - interval '1 hour'"
    " AND upstream_batch_id IS NOT NULL"
)
# A job whose refused lines were failed before it was submitted: the lines it has now.
ROWS = text("UPDATE upstream_jobs SET rows = :rows WHERE id = :job")
NEXT_DUE = text(
    f"SELECT extract(epoch FROM min(next_poll_at) - now()) FROM upstream_jobs"
    f" WHERE status <> '{UpstreamJobStatus.ENDED}'"
)
POLLED = text(
    """
UPDATE upstream_jobs SET upstream_status = coalesce(:status, upstream_status),
    polls = polls + 1, last_error = :error, next_poll_at = now() + make_interval(secs => :in_s)
WHERE id = :job
"""
).bindparams(bindparam("in_s", type_=Float))
# Open jobs per deployment (``tiergate deployments``): one statement over the open jobs only
# (``upstream_jobs_open_idx`` holds them), however many ended jobs pile up.
OPEN_BY_DEPLOYMENT = text(
    f"""
SELECT model, deployment,
       count(*) FILTER (WHERE status = '{UpstreamJobStatus.SUBMITTING}') AS submitting,
       count(*) FILTER (WHERE status = '{UpstreamJobStatus.RUNNING}') AS running,
       sum(rows)::bigint AS rows,
       extract(epoch FROM now() - min(coalesce(submitted_at, created_at))
           FILTER (WHERE status = '{UpstreamJobStatus.RUNNING}'))::float8 AS oldest_running_s
FROM upstream_jobs WHERE status <> '{UpstreamJobStatus.ENDED}'
GROUP BY model, deployment ORDER BY model, deployment
"""
)
# A running job at each poll: its live rows per batch, and whether that batch is being
# cancelled; a few rows per job however many it holds (``requests_upstream_job_idx``).
WATCH = text(
    f"""
WITH held AS (
    SELECT batch_id, count(*) AS rows, min(expires_at) AS soonest FROM requests
    WHERE upstream_job_id = :job AND status = '{Status.IN_PROGRESS}'
    GROUP BY batch_id
)
SELECT h.batch_id, h.rows, h.soonest,
       coalesce(b.status IN {sql_in(STOPPING_BATCH)}, false) AS stopping
FROM held h LEFT JOIN batches b ON b.id = h.batch_id
"""
)
# The held lines of batches being cancelled.
STOPPED = text(
    f"""
SELECT id, attempts, batch_id FROM requests
WHERE upstream_job_id = :job AND status = '{Status.IN_PROGRESS}'
  AND batch_id = ANY(CAST(:batches AS text[]))
"""
)
HELD = text(
    f"""
SELECT r.id, r.attempts, r.body, r.model, r.endpoint, r.batch_id, r.service_tier,
       r.background, r.expires_at, r.owner_key_id, k.name AS key_name, b.status AS batch_status,
       r.cache, k.cache_enabled
FROM requests r JOIN api_keys k ON k.id = r.owner_key_id
LEFT JOIN batches b ON b.id = r.batch_id
WHERE r.upstream_job_id = :job AND r.status = '{Status.IN_PROGRESS}'
ORDER BY r.id
"""
).columns(body=JSONB)
# Rows that run again another time: back to the queue, free of the job; single requests
# wake a dispatcher, batch lines are claimed by their batch's next run job.
GIVE_BACK = text(
    f"""
WITH back AS (
    UPDATE requests AS r
    SET status = '{Status.PENDING}', error = CAST(u.error AS jsonb), claimed_by = NULL,
        job_id = NULL, upstream_job_id = NULL,
        not_before = CASE WHEN u.delay_s > 0 THEN now() + make_interval(secs => u.delay_s) END,
        attempts = r.attempts - u.refund,
        attempt_errors = {attempt_error("u.refund", "CAST(u.error AS jsonb)", "u.deployment", "r.")}
    FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[]), CAST(:errors AS text[]),
                CAST(:delays AS float8[]), CAST(:deployments AS text[]), CAST(:refunds AS int[]))
         AS u(id, attempt, error, delay_s, deployment, refund)
    WHERE r.id = u.id AND r.attempts = u.attempt AND r.status = '{Status.IN_PROGRESS}'
      AND r.upstream_job_id = :job
    RETURNING r.model, r.batch_id, r.not_before
), woken AS (
    SELECT pg_notify('{Channel.WORK}', model)
    FROM (SELECT DISTINCT model FROM back WHERE batch_id IS NULL AND not_before IS NULL) AS m
)
SELECT (SELECT count(*) FROM woken) AS woken,
       (SELECT count(*) FROM back) AS given_back
"""
)
END = text(
    f"""
UPDATE upstream_jobs SET status = '{UpstreamJobStatus.ENDED}', ended_at = now(), owner = NULL,
    upstream_status = coalesce(:status, upstream_status), counts = :counts, last_error = :error
WHERE id = :job
"""
).bindparams(bindparam("counts", type_=JSONB))
# The batches whose lines a job held: the next run job where lines wait, else finalization
# once none is live.
BATCHES_OF = text(
    "SELECT DISTINCT batch_id FROM requests WHERE upstream_job_id = :job AND batch_id IS NOT NULL"
)
MOVE_ON = text(
    f"""
WITH next AS (
    SELECT x.id,
           CASE WHEN EXISTS (SELECT 1 FROM requests r
                             WHERE r.batch_id = x.id AND r.status = '{Status.PENDING}')
                THEN 'run'
                WHEN NOT EXISTS (SELECT 1 FROM requests r
                                 WHERE r.batch_id = x.id AND r.status IN {sql_in(LIVE)})
                THEN 'finalize' END AS step
    FROM unnest(CAST(:ids AS text[])) AS x(id)
)
SELECT id, step,
       CASE WHEN step = 'run' THEN {batches.defer_job(Task.RUN_BATCH, "next.id")}
            ELSE {batches.defer_job(Task.FINALIZE_BATCH, "next.id", locked=True)} END AS job
FROM next WHERE step IS NOT NULL
"""
)


@dataclass(frozen=True, slots=True)
class UpstreamJob(FromRow):
    """A provider job as its poller sees it."""

    id: str
    model: str
    deployment: str
    api: str
    endpoint: str
    status: str
    rows: int
    upstream_file_id: str | None
    upstream_batch_id: str | None
    upstream_status: str | None
    polls: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OpenJobs(FromRow):
    """A deployment's open provider jobs: how many are being submitted, how many run (the
    oldest for how long, since its submission), and the rows they hold."""

    model: str
    deployment: str
    submitting: int
    running: int
    rows: int
    oldest_running_s: float | None


@dataclass(frozen=True, slots=True)
class HeldRow(FromRow):
    """A row a job holds, with what finishing it needs."""

    id: str
    attempts: int
    body: dict[str, Any]
    model: str
    endpoint: str
    batch_id: str | None
    service_tier: str
    background: bool
    expires_at: dt.datetime
    owner_key_id: str
    key_name: str | None
    batch_status: str | None  # a line's batch (``cancelling``: the line ends cancelled)
    cache: str | None  # ``bypass``: its client turned the response cache off
    cache_enabled: bool | None  # its key's cache switch


@dataclass(frozen=True)
class Finished:
    """A held row's final outcome."""

    id: str
    attempt: int
    outcome: Outcome
    batch_id: str | None = None  # a Batch API line's batch (its sums move too)
    background: bool = False  # a background request (the metrics' tier)

    @property
    def line(self) -> bool:
        return self.batch_id is not None


@dataclass(frozen=True)
class JobWatch:
    """A running job at a glance: its live rows (not in a batch being cancelled), the soonest
    end of their windows, and the held lines of batches being cancelled."""

    live: int
    soonest: dt.datetime | None
    stopped: list[Finished]


@dataclass(frozen=True)
class GivenBack:
    """A held row that runs again: after ``delay_s``, not counted as an attempt unless
    ``counted``."""

    id: str
    attempt: int
    error: dict[str, Any]
    delay_s: float = 0.0
    deployment: str | None = None
    counted: bool = False


class UpstreamJobStore:
    """All SQL about providers' Batch API jobs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.transactional = engine.execution_options(isolation_level="READ COMMITTED")

    async def attach(
        self,
        *,
        job: str,
        model: str,
        deployment: str,
        api: str,
        endpoint: str,
        owner: str,
        rows: list[tuple[str, int]],
    ) -> set[tuple[str, int]]:
        """Create job ``job`` holding those of ``rows`` (id, attempt) still claimed as they
        were; those attached (none: no job was created)."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                ATTACH,
                {
                    "job": job,
                    "model": model,
                    "deployment": deployment,
                    "api": api,
                    "endpoint": endpoint,
                    "owner": owner,
                    "ids": [r[0] for r in rows],
                    "attempts": [r[1] for r in rows],
                    "grace_s": SUBMIT_GRACE_S,
                },
            )
            return {(row.id, row.attempts) for row in result}

    async def uploaded(self, job: str, file_id: str) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(UPLOADED, {"job": job, "file": file_id})

    async def submitted(self, job: str, batch_id: str, status: str, poll_in_s: float) -> None:
        async with self.engine.connect() as conn:
            params = {"job": job, "batch": batch_id, "status": status, "in_s": poll_in_s}
            await conn.execute(SUBMITTED, params)

    async def claim_due(self, me: str, silent_s: int, n: int = 20) -> list[UpstreamJob]:
        """Due jobs for process ``me`` to poll (or to submit again), now its own."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(CLAIM_DUE, {"me": me, "silent_s": silent_s, "n": n})
            return [UpstreamJob.from_row(row) for row in rows.mappings()]

    async def provider_ids(self, deployment: str, since: dt.datetime) -> set[str]:
        """The provider job ids held by tiergate jobs of ``deployment`` created since
        ``since`` (an hour's slack)."""
        async with self.engine.connect() as conn:
            params = {"deployment": deployment, "since": since}
            return set((await conn.execute(PROVIDER_IDS, params)).scalars())

    async def next_due_in(self) -> float | None:
        """Seconds until the next open job is due (None: no open job)."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(NEXT_DUE)).scalar()
        return None if found is None else float(found)

    async def open_by_deployment(self) -> list[OpenJobs]:
        """The open jobs of every deployment that has some (one statement)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(OPEN_BY_DEPLOYMENT)
            return [OpenJobs.from_row(row) for row in rows.mappings()]

    async def polled(
        self, job: str, status: str | None, poll_in_s: float, error: str | None = None
    ) -> None:
        async with self.engine.connect() as conn:
            params = {"job": job, "status": status, "in_s": poll_in_s, "error": error}
            await conn.execute(POLLED, params)

    async def watch(self, job: str, stopped_outcome: Outcome) -> JobWatch:
        """What a running job holds, without reading its rows (each poll); the held lines of
        batches being cancelled come with ``stopped_outcome``."""
        async with self.engine.connect() as conn:
            groups = (await conn.execute(WATCH, {"job": job})).all()
            live = [g for g in groups if not g.stopping]
            stopping = [g.batch_id for g in groups if g.stopping]
            stopped: list[Finished] = []
            if stopping:
                rows = await conn.execute(STOPPED, {"job": job, "batches": stopping})
                stopped = [Finished(r.id, r.attempts, stopped_outcome, r.batch_id) for r in rows]
        return JobWatch(
            live=sum(g.rows for g in live),
            soonest=min((g.soonest for g in live), default=None),
            stopped=stopped,
        )

    async def held(self, job: str) -> list[HeldRow]:
        """The live rows ``job`` holds."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(HELD, {"job": job})
            return [HeldRow.from_row(row) for row in rows.mappings()]

    async def finish(self, finished: list[Finished]) -> set[str]:
        """Store the final outcomes of some of a running job's rows (cancelled lines), and
        move their batches on (finalized once no line is live); returns the ids stored."""
        batch_ids = sorted({f.batch_id for f in finished if f.batch_id is not None})
        async with self.transactional.begin() as conn:
            stored = await _finish(conn, finished)
            if batch_ids:
                await conn.execute(MOVE_ON, {"ids": batch_ids})
        return stored

    async def refused(self, job: str, finished: list[Finished], *, rows: int) -> set[str]:
        """Fail the rows whose lines the provider's format refused (never sent) before the
        job's other ``rows`` lines are submitted (``rows`` is what ``find`` looks for);
        returns the ids stored."""
        async with self.transactional.begin() as conn:
            stored = await _finish(conn, finished)
            await conn.execute(ROWS, {"job": job, "rows": rows})
        return stored

    async def settle(
        self,
        job: str,
        finished: list[Finished],
        given_back: list[GivenBack],
        *,
        status: str | None,
        counts: dict[str, int],
        error: str | None = None,
    ) -> set[str]:
        """Store the job's results, give back what runs again, move the batches of its lines
        on and end the job: one transaction. Returns the ids of the results stored."""
        async with self.transactional.begin() as conn:
            batch_ids = list((await conn.execute(BATCHES_OF, {"job": job})).scalars())
            stored = await _finish(conn, finished)
            if given_back:
                await conn.execute(
                    GIVE_BACK,
                    {
                        "job": job,
                        "ids": [g.id for g in given_back],
                        "attempts": [g.attempt for g in given_back],
                        "errors": [jsontext.dumps(g.error) for g in given_back],
                        "delays": [g.delay_s for g in given_back],
                        "deployments": [g.deployment for g in given_back],
                        "refunds": [0 if g.counted else 1 for g in given_back],
                    },
                )
            if batch_ids:
                await conn.execute(MOVE_ON, {"ids": batch_ids})
            await conn.execute(
                END, {"job": job, "status": status, "counts": counts, "error": error}
            )
        return stored


async def _finish(conn: AsyncConnection, finished: list[Finished]) -> set[str]:
    """Final outcomes, by the statement of their kind: single requests wake their clients,
    Batch API lines move their batch's sums. Returns the ids stored (both return them)."""
    stored: set[str] = set()
    for is_line, statement in ((False, requests.FINISH_MANY), (True, batches.FINISH_MANY)):
        done = [f for f in finished if f.line == is_line]
        if done:
            params = {
                "ids": [f.id for f in done],
                "attempts": [f.attempt for f in done],
                **stored_arrays([f.outcome for f in done]),
            }
            stored.update(row.id for row in await conn.execute(statement, params))
    return stored
