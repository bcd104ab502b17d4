"""The procrastinate App: its connector (psycopg pool, sized explicitly) and its tasks.

Rescue and sweep are not tasks: see ``worker/maintenance.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import procrastinate
import psycopg
from procrastinate.exceptions import ConnectorException
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job, Status
from procrastinate.manager import JobManager
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
# How long a job's outcome is retried while the database is unreachable. Past it the job is
# left 'doing': this worker's heartbeat has failed too by then, so the rescue re-runs it.
OUTCOME_RETRY_S = 30.0


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


def _already_taken(exc: ConnectorException) -> bool:
    """procrastinate refused to record an outcome: the job is no longer this run's (the
    rescue re-queued it while this worker was cut off from the database)."""
    cause = exc.__cause__
    return isinstance(cause, psycopg.errors.RaiseException) and "Job was not found or" in str(cause)


class OutcomeRecorder(JobManager):
    """procrastinate's job manager, except for how a run's outcome is recorded.

    procrastinate records it in a task nobody awaits: if the database refuses or is down, the
    worker logs a bare "Task exception was never retrieved" traceback and forgets the outcome.
    Here a refusal (the job was rescued and handed to another run, which stands) is one line,
    and an unreachable database is waited for a while, so a short restart loses no outcome.
    """

    async def finish_job(self, job: Job, status: Status, delete_job: bool) -> None:
        parent = super().finish_job
        await self._record(job, "outcome", lambda: parent(job, status, delete_job))

    async def retry_job(self, job: Job, *args: Any, **kwargs: Any) -> None:
        parent = super().retry_job
        await self._record(job, "retry", lambda: parent(job, *args, **kwargs))

    @staticmethod
    async def _record(job: Job, what: str, write: Callable[[], Awaitable[None]]) -> None:
        deadline = time.monotonic() + OUTCOME_RETRY_S
        while True:
            try:
                await write()
                return
            except ConnectorException as exc:
                if _already_taken(exc):
                    log.warning(
                        "job %s (%s): its %s was not recorded: the job was rescued while this"
                        " worker was cut off from the database, and its new run stands",
                        job.id,
                        job.task_name,
                        what,
                    )
                    return
                if not database_unavailable(exc.__cause__ or exc):
                    raise
                if time.monotonic() >= deadline:
                    log.warning(
                        "job %s (%s): its %s was not recorded (database unavailable for %.0fs);"
                        " the rescue runs it again",
                        job.id,
                        job.task_name,
                        what,
                        OUTCOME_RETRY_S,
                    )
                    return
            await asyncio.sleep(DATABASE_RETRY_S)


def _database_away(exc: BaseException) -> bool:
    return database_unavailable(
        exc.__cause__ or exc if isinstance(exc, ConnectorException) else exc
    )


class OneLineWhenDatabaseAway(logging.Filter):
    """procrastinate logs each failure of its listener, heartbeat or abort poll with a full
    traceback; while the database is away that is one line each (what failed, and why)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _database_away(exc):
            cause = exc.__cause__ or exc
            record.msg = f"{record.getMessage()} (database unavailable: {cause!s})".replace(
                "\n", " "
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_procrastinate_outages() -> None:
    """Install :class:`OneLineWhenDatabaseAway` on procrastinate's loggers (idempotent)."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "procrastinate"]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineWhenDatabaseAway) for f in logger.filters):
            logger.addFilter(OneLineWhenDatabaseAway())


class SessionListenConnector(procrastinate.PsycopgConnector):
    """procrastinate's connector, its LISTEN connection on ``listen_conninfo``: the pool may
    go through a transaction-mode pooler, which would hand the LISTEN's session to others."""

    def __init__(self, listen_conninfo: str, **pool_args: Any) -> None:
        super().__init__(**pool_args)
        self._listen_conninfo = listen_conninfo

    @contextlib.asynccontextmanager
    async def _get_standalone_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        # procrastinate opens this connection for its LISTEN only (listen_notify).
        async with await psycopg.AsyncConnection.connect(
            self._listen_conninfo, application_name="tiergate-worker", autocommit=True
        ) as connection:
            yield connection


def build_job_app(
    url: DatabaseURL,
    settings: Settings,
    *,
    batch_jobs: BatchJobs,
) -> procrastinate.App:
    """The job app with tiergate's batch tasks bound to this worker's stores."""
    kwargs: dict[str, Any] = {"application_name": "tiergate-worker"}
    if url.transaction_pooled:
        # psycopg prepares a query (named "_pg3_N", in one server session) from its 5th run.
        kwargs["prepare_threshold"] = None
    connector = SessionListenConnector(
        url.session().libpq(),
        conninfo=url.libpq(),
        min_size=1,
        max_size=settings.limits.job_pool_size,  # its LISTEN connection is one more, apart
        kwargs=kwargs,
        timeout=POOL_TIMEOUT_S,
    )
    app = procrastinate.App(connector=connector)
    app.job_manager = OutcomeRecorder(connector)
    quiet_procrastinate_outages()
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
