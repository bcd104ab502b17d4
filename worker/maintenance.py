"""Rescue and sweep: every worker process runs them on timers of its own.

They are deliberately not procrastinate jobs. A job waits its turn: behind a flex backlog
(same priority, older ids) or for a free slot (a batch's run jobs can hold every slot of a
worker for hours). Rescue must not wait, so each worker process runs them beside its job loop.
Running them in several processes at once is harmless: every step is a guarded statement, and
a job rescued by another process is skipped.

Each duty is a unit of its own (a ``Duty``, as River runs each maintenance service on its own):
it runs on its own interval (``maintenance_every_s`` unless it says otherwise), logs what it
did in its own words, and a failure of one is logged with its name, counted in
``tiergate_maintenance_failures_total{duty=...}``, and neither stops nor skips another; it runs
again at its next tick.

No duty relies on another having run first: the processes' timers are not synchronised, so
their statements interleave anyway, and each statement stands alone (a request rescued past
its window is expired by the next sweep, or by the worker that claims it; a batch the safety
net restarts past its window is expired all the same). The one dependency is kept inside a
unit: stalled workers are pruned by the duty that re-queues their jobs.

The duties run one after the other in one loop rather than in a task each: the worker's pool
is sized to its job concurrency with no overflow, so maintenance keeps to one connection at a
time, and duties that share an interval run in one pass, in the order of ``duties``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from procrastinate.exceptions import ConnectorException
from procrastinate.manager import JobManager

from app.metrics import Metrics
from app.settings import Limits
from app.store.batches import BatchStore
from app.store.cache import CacheStore
from app.store.db import database_unavailable
from app.store.files import FileStore
from app.store.orphans import OrphanStore
from app.store.outcomes import Ended
from app.store.queue_depth import QueueDepthStore
from app.store.retention import RetentionStore
from app.store.sweeps import RequestSweeps
from app.vocabulary import ErrorCode, Status

log = logging.getLogger("tiergate.maintenance")

# Expired cache entries deleted per statement (chunks_per_pass statements per sweep at most).
CACHE_CHUNK = 1000
# A half-written file older than this belongs to an upload or finalize that died.
ABANDONED_UPLOAD_S = 3600


@dataclass(frozen=True)
class Duty:
    """One maintenance duty: a name (in logs and metrics), what it runs, and how often
    (``None``: every ``limits.maintenance_every_s``)."""

    name: str
    run: Callable[[], Awaitable[object]]
    every_s: float | None = None

    def __post_init__(self) -> None:
        if self.every_s is not None and self.every_s <= 0:
            raise ValueError(f"duty {self.name}: every_s must be positive, not {self.every_s}")


class Maintenance:
    """Re-queues jobs of dead workers; expires overdue work; closes orphaned rows."""

    def __init__(
        self,
        *,
        limits: Limits,
        requests: RequestSweeps,
        batches: BatchStore,
        files: FileStore,
        orphans: OrphanStore,
        retention: RetentionStore,
        queue_depth: QueueDepthStore,
        cache: CacheStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.cache = cache
        self.limits = limits
        self.requests = requests
        self.batches = batches
        self.files = files
        self.orphans = orphans
        self.retention = retention
        self.queue_depth = queue_depth
        self.metrics = metrics

    def duties(self, jobs: JobManager | None = None) -> list[Duty]:
        """Every duty, in the order of a pass; the job rescue only with a ``jobs`` manager."""
        rescue = [Duty("rescue_jobs", functools.partial(self.rescue, jobs))] if jobs else []
        return [
            *rescue,
            Duty("expire_requests", self.expire_requests),
            Duty("expire_batches", self.expire_batches),
            Duty("prune_files", self.prune_files),
            Duty("reap_realtime", self.reap_realtime),
            Duty("rescue_requests", self.rescue_requests),
            Duty("requeue_orphans", self.requeue_orphans),
            Duty("retention", self.prune_retention),
            Duty("cache", self.prune_cache),
            Duty("queue_depth", self.count_queue),
        ]

    async def rescue(self, jobs: JobManager) -> int:
        """Re-queue the running jobs of workers silent for ``stalled_after_s``; prune those
        workers. procrastinate records heartbeats but never does this by itself."""
        seconds = self.limits.stalled_after_s
        rescued = 0
        for job in await jobs.get_stalled_jobs(seconds_since_heartbeat=seconds):
            try:
                await jobs.retry_job(job)
            except ConnectorException:
                continue  # another process rescued it first (it is no longer 'doing')
            rescued += 1
            log.warning("rescued job %s (%s) of a dead worker", job.id, job.task_name)
        # Pruned in the same unit, after their jobs are back: one handling of silent workers.
        await jobs.prune_stalled_workers(seconds)
        return rescued

    async def expire_requests(self) -> None:
        """Expire single requests still queued past their window."""
        expired = await self.requests.expire_overdue()
        if expired:
            self._count(expired, Status.EXPIRED, ErrorCode.REQUEST_EXPIRED)
            log.info("sweep: %d requests expired", len(expired))

    async def expire_batches(self) -> None:
        """Expire the queued lines of batches past their window and finalize those batches."""
        expired = await self.batches.expire_overdue()
        self._count(expired.lines, Status.EXPIRED, ErrorCode.BATCH_EXPIRED)
        if expired.batches:
            log.info("sweep: %d batches expired", len(expired.batches))

    async def prune_files(self) -> None:
        """Drop files whose upload or finalize died half-way."""
        pruned = await self.files.prune_abandoned(ABANDONED_UPLOAD_S)
        if pruned:
            log.info("sweep: deleted %d files left half-written (%s)", len(pruned), pruned)

    async def reap_realtime(self) -> None:
        """Close the realtime rows of gateways that died mid-call."""
        reaped = await self.requests.reap_realtime(self.limits.stalled_after_s)
        if reaped:
            log.info("sweep: %d interrupted realtime rows", len(reaped))

    async def rescue_requests(self) -> None:
        """Give the requests of dead workers back (or up, after too many runs)."""
        rescued, gave_up = await self.requests.rescue_claimed(self.limits.stalled_after_s)
        self._count(gave_up, Status.FAILED, ErrorCode.PROCESSING_FAILED)
        if rescued or gave_up:
            log.warning(
                "requests of dead workers: %d back in the queue, %d given up (%s)",
                len(rescued),
                len(gave_up),
                [row.id for row in gave_up],
            )

    async def requeue_orphans(self) -> None:
        """Requeue batch work whose job ended early (the safety net, ``orphans.py``)."""
        requeued = await self.orphans.requeue()
        self._count(requeued.failed, Status.FAILED, ErrorCode.PROCESSING_FAILED)
        if requeued:
            log.warning(
                "requeued work whose job had ended: %d batch lines, batches %s",
                len(requeued.lines),
                requeued.batches,
            )

    async def prune_retention(self) -> None:
        """Delete a bounded part of the history past its retention."""
        pruned = await self.retention.prune(self.limits.retention.chunks_per_pass)
        if pruned:
            log.info("retention: deleted %s", pruned)

    async def prune_cache(self) -> None:
        """Delete a bounded part of the cache's expired answers."""
        stale = 0
        for _ in range(self.limits.retention.chunks_per_pass):
            gone = await self.cache.prune_chunk(CACHE_CHUNK)
            stale += gone
            if gone < CACHE_CHUNK:
                break
        if stale:
            log.info("cache: deleted %d expired answers", stale)

    async def count_queue(self) -> None:
        """Count the live queue for /metrics when no process has lately."""
        if await self.queue_depth.count_if_stale(self.limits.metrics_max_age_s):
            log.debug("queue depth counted")

    def _count(self, ended: list[Ended], status: Status, code: ErrorCode) -> None:
        """Count rows a sweep ended (``tiergate_deferred_outcomes``): one increment per
        model, tier and path."""
        if self.metrics is None or not ended:
            return
        counts: Counter[tuple[str, str, str]] = Counter()
        for rows in ended:
            counts[rows.model, rows.tier, rows.executor] += rows.rows
        for (model, tier, executor), n in counts.items():
            self.metrics.count_deferred((model, tier, str(status), str(code), executor), n)

    async def sweep(self) -> None:
        """Every duty but the job rescue, once and in order; the first failure propagates.

        One pass, as a benchmark measures it; the worker runs the duties through ``run``."""
        for duty in self.duties():
            await duty.run()

    async def run(self, jobs: JobManager) -> None:
        """Run every duty on its own timer until cancelled."""
        await run_duties(self.duties(jobs), self.limits.maintenance_every_s, self.metrics)


async def run_duties(
    duties: Sequence[Duty], every_s: float, metrics: Metrics | None = None
) -> None:
    """Run each duty when it falls due, until cancelled.

    All duties are due at the start. Those due together run in one pass, in order; each then
    falls due again its interval (``every_s`` by default) after the end of that pass, whether
    it failed or not."""
    if metrics is not None:
        for duty in duties:  # a series at 0 from the start, not one that appears on a failure
            metrics.maintenance_failures.labels(duty.name)
    if not duties:
        return
    due = [0.0] * len(duties)
    while True:
        _stop_if_cancelled()
        now = time.monotonic()
        ran = [i for i, at in enumerate(due) if at <= now]
        for i in ran:
            if not await _run_once(duties[i]) and metrics is not None:
                metrics.maintenance_failures.labels(duties[i].name).inc()
        end = time.monotonic()
        for i in ran:
            own = duties[i].every_s
            due[i] = end + (every_s if own is None else own)
        await asyncio.sleep(max(0.0, min(due) - time.monotonic()))


def _stop_if_cancelled() -> None:
    """Honour a cancellation that a duty's await swallowed: Python 3.11's ``asyncio.wait_for``
    (in the database drivers' pools) returns a result, or raises ``TimeoutError``, when the
    cancel lands as its inner wait ends. The worker's restart after a database outage then
    waited for this loop for ever (found by tests/e2e/test_failover.py)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _run_once(duty: Duty) -> bool:
    """Run ``duty``; log a failure with its name (True if it succeeded)."""
    try:
        await duty.run()
    except Exception as exc:
        if database_unavailable(exc) or isinstance(exc, ConnectorException):
            log.warning("maintenance %s skipped: database unavailable (%s)", duty.name, exc)
        else:
            log.exception("maintenance %s failed", duty.name)
        return False
    return True
