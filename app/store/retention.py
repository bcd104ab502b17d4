"""Retention: history older than ``limits.retention`` is deleted, a bounded chunk at a time.

Six kinds of history, each deleted oldest first by one short statement per chunk (``FOR
UPDATE SKIP LOCKED``, so that several workers pruning at once never wait on each other and no
statement holds many locks for long):

- ``requests``: finished single requests and realtime rows (``requests_days``), the stored
  events of background streams with them (``response_events``: ``ON DELETE CASCADE``);
- ``batches``: finished Batch API batches with their lines, the lines first, a chunk at a
  time, then the batch (``requests_days``); and the single-request batches of revisions
  before 0005;
- ``files``: processed files that no live batch reads, with their parts (``files_days``);
- ``expired``: files whose ``expires_at`` (set by ``expires_after`` at upload) has passed,
  whatever the retention, unless a live batch reads them; they are 404s already
  (``FileStore.get``);
- ``jobs``: procrastinate's finished jobs with their events (``events_days``);
- ``webhooks``: finished webhook deliveries, delivered or given up
  (``webhook_deliveries_days``), over the partial index of finished ones
  (``webhook_deliveries_finished_created_idx``); pending ones stay, however old.

Live work is never deleted, however old. A request past its retention is already a 404
before it is deleted (``RequestStore.get``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Retention
from app.vocabulary import (
    FINAL,
    FINAL_BATCH,
    FINISHED_DELIVERY,
    LIVE_BATCH,
    BatchKind,
    FileStatus,
    sql_in,
)

CHUNK = 1000
FILES_CHUNK = 20  # a file is up to 200 parts of 1 MiB
FINISHED_JOB = "j.status IN ('succeeded', 'failed', 'cancelled', 'aborted')"

REQUESTS_WHERE = f"""
    custom_id IS NULL AND status IN {sql_in(FINAL)}
    AND created_at < now() - make_interval(days => :days)
"""
BATCHES_WHERE = f"""
    kind = '{BatchKind.FILE}' AND status IN {sql_in(FINAL_BATCH)}
    AND created_at < now() - make_interval(days => :days)
"""
# Revisions before 0005 gave each flex/background request a batch of its own: it goes once
# its request has (the request is pruned as a request).
SINGLES_WHERE = f"""
    kind = '{BatchKind.SINGLE}' AND created_at < now() - make_interval(days => :days)
    AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = batches.id)
"""
FILES_WHERE = f"""
    f.status = '{FileStatus.PROCESSED}' AND f.created_at < now() - make_interval(days => :days)
    AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.input_file_id = f.id
                    AND b.status IN {sql_in(LIVE_BATCH)})
"""
EXPIRED_FILES_WHERE = f"""
    f.expires_at < now() AND f.status = '{FileStatus.PROCESSED}'
    AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.input_file_id = f.id
                    AND b.status IN {sql_in(LIVE_BATCH)})
"""
JOBS_WHERE = f"""
    {FINISHED_JOB} AND NOT EXISTS (
        SELECT 1 FROM procrastinate_events e
        WHERE e.job_id = j.id AND e.at >= now() - make_interval(days => :days))
"""
DELIVERIES_WHERE = f"""
    status IN {sql_in(FINISHED_DELIVERY)} AND created_at < now() - make_interval(days => :days)
"""

# Each delete names its rows by ``id = ANY(ARRAY(...))``, not by a join: the planner cannot
# know how few the LIMIT lets through, and a hash join would scan the whole table.
PRUNE_REQUESTS = text(
    f"""
DELETE FROM requests WHERE id = ANY(ARRAY(
    SELECT id FROM requests WHERE {REQUESTS_WHERE}
    ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED
))
"""
)
# The oldest expired batch: its lines go a chunk at a time, then (none left) the batch.
PRUNE_BATCH_LINES = text(
    f"""
WITH b AS (
    SELECT id FROM batches WHERE {BATCHES_WHERE} ORDER BY created_at LIMIT 1
), gone AS (
    DELETE FROM requests WHERE id = ANY(ARRAY(
        SELECT r.id FROM requests r WHERE r.batch_id = (SELECT id FROM b)
        LIMIT :n FOR UPDATE SKIP LOCKED
    ))
    RETURNING 1
)
SELECT (SELECT id FROM b) AS batch, (SELECT count(*) FROM gone) AS lines
"""
)
DELETE_BATCH = text(
    "DELETE FROM batches WHERE id = :id"
    " AND NOT EXISTS (SELECT 1 FROM requests WHERE batch_id = :id)"
)
PRUNE_SINGLES = text(
    f"""
DELETE FROM batches WHERE id = ANY(ARRAY(
    SELECT id FROM batches WHERE {SINGLES_WHERE}
    ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED
))
"""
)
PRUNE_FILES = text(
    f"""
DELETE FROM files WHERE id = ANY(ARRAY(
    SELECT f.id FROM files f WHERE {FILES_WHERE}
    ORDER BY f.created_at LIMIT :n FOR UPDATE SKIP LOCKED
))
"""
)
# Over the partial index of files that expire (files_expires_idx).
PRUNE_EXPIRED_FILES = text(
    f"""
DELETE FROM files WHERE id = ANY(ARRAY(
    SELECT f.id FROM files f WHERE {EXPIRED_FILES_WHERE}
    ORDER BY f.expires_at LIMIT :n FOR UPDATE SKIP LOCKED
))
"""
)
# Job ids grow with time: the oldest finished jobs are looked at, and only they. When even they
# are too recent, nothing is (a pass costs a bounded number of rows, not the whole history).
PRUNE_JOBS = text(
    f"""
DELETE FROM procrastinate_jobs WHERE id = ANY(ARRAY(
    SELECT j.id FROM procrastinate_jobs j
    WHERE j.id = ANY(ARRAY(
        SELECT o.id FROM procrastinate_jobs o WHERE {FINISHED_JOB.replace("j.", "o.")}
        ORDER BY o.id LIMIT :n))
      AND NOT EXISTS (
        SELECT 1 FROM procrastinate_events e
        WHERE e.job_id = j.id AND e.at >= now() - make_interval(days => :days))
    FOR UPDATE SKIP LOCKED
))
"""
)
PRUNE_DELIVERIES = text(
    f"""
DELETE FROM webhook_deliveries WHERE id = ANY(ARRAY(
    SELECT id FROM webhook_deliveries WHERE {DELIVERIES_WHERE}
    ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED
))
"""
)

COUNTS = {
    "requests": f"SELECT count(*) FROM requests WHERE {REQUESTS_WHERE}",
    "batches": f"SELECT count(*) FROM batches WHERE ({BATCHES_WHERE}) OR ({SINGLES_WHERE})",
    "files": f"SELECT count(*) FROM files f WHERE {FILES_WHERE}",
    "expired": f"SELECT count(*) FROM files f WHERE {EXPIRED_FILES_WHERE}",
    "jobs": f"SELECT count(*) FROM procrastinate_jobs j WHERE {JOBS_WHERE}",
    "webhooks": f"SELECT count(*) FROM webhook_deliveries WHERE {DELIVERIES_WHERE}",
}
KINDS = tuple(COUNTS)


@dataclass(frozen=True)
class Pruned:
    """Rows deleted by one pass, by kind."""

    requests: int = 0
    batches: int = 0
    lines: int = 0
    files: int = 0
    expired: int = 0
    jobs: int = 0
    webhooks: int = 0

    def __bool__(self) -> bool:
        return any(
            (
                self.requests,
                self.batches,
                self.lines,
                self.files,
                self.expired,
                self.jobs,
                self.webhooks,
            )
        )


class RetentionStore:
    """Deletes history past its retention, in chunks."""

    def __init__(self, engine: AsyncEngine, retention: Retention) -> None:
        self.engine = engine
        self.retention = retention

    def _days(self, kind: str) -> int | None:
        """The retention of ``kind`` (``expired`` files have their own: 0 days past it)."""
        if kind in ("requests", "batches"):
            return self.retention.requests_days
        if kind == "files":
            return self.retention.files_days
        if kind == "expired":
            return 0
        if kind == "webhooks":
            return self.retention.webhook_deliveries_days
        return self.retention.events_days

    async def count(self, kind: str) -> int | None:
        """How many rows of ``kind`` are past retention (None: kept for ever)."""
        days = self._days(kind)
        if days is None:
            return None
        async with self.engine.connect() as conn:
            result = await conn.execute(text(COUNTS[kind]), {"days": days})
            return int(result.scalar_one())

    async def prune_chunk(self, kind: str) -> tuple[int, int]:
        """Delete one chunk of ``kind``; returns (rows of that kind, batch lines) deleted.

        A chunk of ``batches`` deletes lines of the oldest expired batch, or the batch itself
        once it has none left."""
        days = self._days(kind)
        if days is None:
            return 0, 0
        async with self.engine.connect() as conn:
            if kind == "requests":
                result = await conn.execute(PRUNE_REQUESTS, {"days": days, "n": CHUNK})
                return result.rowcount, 0
            if kind == "files":
                result = await conn.execute(PRUNE_FILES, {"days": days, "n": FILES_CHUNK})
                return result.rowcount, 0
            if kind == "expired":
                result = await conn.execute(PRUNE_EXPIRED_FILES, {"n": FILES_CHUNK})
                return result.rowcount, 0
            if kind == "jobs":
                result = await conn.execute(PRUNE_JOBS, {"days": days, "n": CHUNK})
                return result.rowcount, 0
            if kind == "webhooks":
                result = await conn.execute(PRUNE_DELIVERIES, {"days": days, "n": CHUNK})
                return result.rowcount, 0
            row = (await conn.execute(PRUNE_BATCH_LINES, {"days": days, "n": CHUNK})).one()
            if row.batch is None:
                result = await conn.execute(PRUNE_SINGLES, {"days": days, "n": CHUNK})
                return result.rowcount, 0
            if row.lines:
                return 0, int(row.lines)
            deleted = await conn.execute(DELETE_BATCH, {"id": row.batch})
            return deleted.rowcount, 0

    async def prune(self, max_chunks: int) -> Pruned:
        """Delete up to ``max_chunks`` chunks of each kind (a bounded pass)."""
        totals = dict.fromkeys(("requests", "batches", "lines", *KINDS), 0)
        for kind in KINDS:
            for _ in range(max_chunks):
                rows, lines = await self.prune_chunk(kind)
                totals[kind] += rows
                totals["lines"] += lines
                if not rows and not lines:
                    break
        return Pruned(**totals)
