"""Rescue and sweep: every worker process runs them on a timer of its own.

They are deliberately not procrastinate jobs. A job waits its turn: behind a flex backlog
(same priority, older ids) or for a free slot (a batch's run jobs can hold every slot of a
worker for hours). Rescue must not wait, so each worker process calls it every
``maintenance_every_s`` beside its job loop. Running it in several processes at once is
harmless: every step is a guarded statement, and a job rescued by another process is skipped.
"""

from __future__ import annotations

import asyncio
import logging

from procrastinate.exceptions import ConnectorException
from procrastinate.manager import JobManager

from app.settings import Limits
from app.store.batches import BatchStore
from app.store.cache import CacheStore
from app.store.db import database_unavailable
from app.store.files import FileStore
from app.store.orphans import OrphanStore
from app.store.queue_depth import QueueDepthStore
from app.store.retention import RetentionStore
from app.store.sweeps import RequestSweeps

log = logging.getLogger("tiergate.maintenance")

# Expired cache entries deleted per statement (chunks_per_pass statements per sweep at most).
CACHE_CHUNK = 1000
# A half-written file older than this belongs to an upload or finalize that died.
ABANDONED_UPLOAD_S = 3600


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
    ) -> None:
        self.cache = cache
        self.limits = limits
        self.requests = requests
        self.batches = batches
        self.files = files
        self.orphans = orphans
        self.retention = retention
        self.queue_depth = queue_depth

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
        await jobs.prune_stalled_workers(seconds)
        return rescued

    async def sweep(self) -> None:
        """Expire queued work past its window, close realtime rows of dead gateways, give the
        requests of dead workers back, drop files whose upload or finalize died half-way,
        requeue batch work whose job ended early, delete a bounded part of the history past
        its retention and of the cache's expired answers; count the live queue for /metrics
        when no process has lately."""
        expired = await self.requests.expire_overdue()
        expired += await self.batches.expire_overdue()
        await self.files.prune_abandoned(ABANDONED_UPLOAD_S)
        reaped = await self.requests.reap_realtime(self.limits.stalled_after_s)
        if expired or reaped:
            log.info("sweep: %d expired, %d interrupted realtime rows", len(expired), len(reaped))
        rescued, gave_up = await self.requests.rescue_claimed(self.limits.stalled_after_s)
        if rescued or gave_up:
            log.warning(
                "requests of dead workers: %d back in the queue, %d given up (%s)",
                len(rescued),
                len(gave_up),
                gave_up,
            )
        requeued = await self.orphans.requeue()
        if requeued:
            log.warning(
                "requeued work whose job had ended: %d batch lines, batches %s",
                len(requeued.lines),
                requeued.batches,
            )
        pruned = await self.retention.prune(self.limits.retention.chunks_per_pass)
        if pruned:
            log.info("retention: deleted %s", pruned)
        stale = 0
        for _ in range(self.limits.retention.chunks_per_pass):
            gone = await self.cache.prune_chunk(CACHE_CHUNK)
            stale += gone
            if gone < CACHE_CHUNK:
                break
        if stale:
            log.info("cache: deleted %d expired answers", stale)
        await self.queue_depth.count_if_stale(self.limits.metrics_max_age_s)

    async def run(self, jobs: JobManager) -> None:
        """Rescue and sweep every ``maintenance_every_s`` until cancelled."""
        while True:
            try:
                await self.rescue(jobs)
                await self.sweep()
            except Exception as exc:
                if not (database_unavailable(exc) or isinstance(exc, ConnectorException)):
                    log.exception("maintenance failed")
                else:
                    log.warning("maintenance skipped: database unavailable (%s)", exc)
            await asyncio.sleep(self.limits.maintenance_every_s)
