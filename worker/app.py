"""The procrastinate App: its connector (psycopg pool, sized explicitly) and its tasks.

Rescue and sweep are not tasks: see ``worker/maintenance.py``.
"""

from __future__ import annotations

import datetime as dt
import logging

import procrastinate
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from app.settings import Settings
from app.store.db import database_unavailable
from app.store.dburl import DatabaseURL
from app.vocabulary import Queue, Task
from worker.batches import BatchJobs
from worker.execute import RetryLater
from worker.wake import Waker

log = logging.getLogger("tiergate.worker")

DATABASE_RETRY_S = 1
# Nobody waits longer than this for a pooled connection (psycopg_pool's default is 30 s):
# while the database is down, tasks and heartbeats fail fast instead of queueing up.
POOL_TIMEOUT_S = 10.0


class UpstreamRetry(BaseRetryStrategy):
    """Retry what a batch job asked to retry, when it asked (waking a worker then:
    procrastinate itself would only notice at its next poll), and any task that lost its
    database."""

    def __init__(self, waker: Waker) -> None:
        self.waker = waker

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, RetryLater):
            retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=exception.delay_s)
            self.waker.wake_at_due(job.id, job.queue, exception.delay_s)
            return RetryDecision(retry_at=retry_at)
        if database_unavailable(exception):
            # Not the task's fault: run it again once the database is back. (If it is still
            # down, recording this retry fails too, and the rescue takes the job over.)
            return RetryDecision(retry_in={"seconds": DATABASE_RETRY_S})
        return None


def build_job_app(
    url: DatabaseURL,
    settings: Settings,
    *,
    batch_jobs: BatchJobs,
) -> procrastinate.App:
    """The job app with tiergate's batch tasks bound to this worker's stores."""
    connector = procrastinate.PsycopgConnector(
        conninfo=url.libpq(),
        min_size=1,
        max_size=settings.limits.job_pool_size,  # its LISTEN connection is one more, apart
        kwargs={"application_name": "tiergate-worker"},
        timeout=POOL_TIMEOUT_S,
    )
    app = procrastinate.App(connector=connector)
    retry = UpstreamRetry(Waker(connector))

    @app.task(name=Task.VALIDATE_BATCH, queue=Queue.BATCH, retry=retry)
    async def validate_batch(batch_id: str) -> None:
        await batch_jobs.validate(batch_id)

    @app.task(name=Task.RUN_BATCH, queue=Queue.BATCH, retry=retry, pass_context=True)
    async def run_batch(context: JobContext, batch_id: str) -> None:
        assert context.job.id is not None
        await batch_jobs.run(batch_id, context.job.id)

    @app.task(name=Task.FINALIZE_BATCH, queue=Queue.BATCH, retry=retry)
    async def finalize_batch(batch_id: str) -> None:
        await batch_jobs.finalize(batch_id)

    return app
