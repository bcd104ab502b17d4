"""How a job run's outcome is recorded when the job is no longer the run's or the database
is away: one warning line, never an unretrieved task's traceback, and no outcome dropped
while a short restart lasts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import procrastinate
import psycopg
import pytest
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job, Status
from sqlalchemy import text

import worker.app as job_app
from app.store.dburl import DatabaseURL
from app.vocabulary import Queue, Task
from worker.app import OutcomeRecorder


@pytest.fixture
async def recorder(database: DatabaseURL) -> AsyncIterator[OutcomeRecorder]:
    connector = procrastinate.PsycopgConnector(conninfo=database.libpq(), min_size=1, max_size=2)
    await connector.open_async()
    yield OutcomeRecorder(connector)
    await connector.close_async()


async def job_in(engine, status: str) -> Job:  # type: ignore[no-untyped-def]
    async with engine.begin() as conn:
        job_id = (
            await conn.execute(
                text(
                    "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
                    " VALUES (:queue, :task, '{}', CAST(:status AS procrastinate_job_status))"
                    " RETURNING id"
                ),
                {"queue": Queue.BATCH, "task": Task.FINALIZE_BATCH, "status": status},
            )
        ).scalar_one()
    return Job(
        id=job_id, queue=Queue.BATCH, lock=None, queueing_lock=None, task_name=Task.FINALIZE_BATCH
    )


async def status_of(engine, job: Job) -> str:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT status FROM procrastinate_jobs WHERE id = :id"), {"id": job.id}
            )
        ).scalar_one()


async def test_a_running_jobs_outcome_is_recorded(engine, recorder: OutcomeRecorder):
    job = await job_in(engine, "doing")
    await recorder.finish_job(job, Status.SUCCEEDED, delete_job=False)
    assert await status_of(engine, job) == "succeeded"


async def test_an_outcome_refused_because_the_job_was_rescued_is_one_warning(
    engine, recorder: OutcomeRecorder, caplog: pytest.LogCaptureFixture
):
    # The rescue re-queued the job while this run was cut off, and the new run finished it.
    job = await job_in(engine, "succeeded")
    with caplog.at_level(logging.WARNING, logger="tiergate.worker"):
        await recorder.finish_job(job, Status.FAILED, delete_job=True)
        await recorder.retry_job(job)
    assert await status_of(engine, job) == "succeeded"  # the new run's outcome stands
    warnings = [r for r in caplog.records if r.name == "tiergate.worker"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    assert all("was rescued" in r.getMessage() and r.exc_info is None for r in warnings)
    assert f"job {job.id}" in warnings[0].getMessage()


def unreachable() -> ConnectorException:
    exc = ConnectorException()
    exc.__cause__ = psycopg.OperationalError("connection refused")
    return exc


async def test_an_outcome_is_written_once_the_database_is_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(job_app, "DATABASE_RETRY_S", 0)
    attempts: list[int] = []

    async def write() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise unreachable()

    job = Job(id=7, queue=Queue.BATCH, lock=None, queueing_lock=None, task_name="t")
    with caplog.at_level(logging.WARNING, logger="tiergate.worker"):
        await OutcomeRecorder._record(job, "outcome", write)
    assert len(attempts) == 3
    assert not caplog.records


async def test_an_outcome_given_up_after_the_window_is_left_to_the_rescue(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(job_app, "DATABASE_RETRY_S", 0)
    monkeypatch.setattr(job_app, "OUTCOME_RETRY_S", 0.05)

    async def write() -> None:
        raise unreachable()

    job = Job(id=8, queue=Queue.BATCH, lock=None, queueing_lock=None, task_name="t")
    with caplog.at_level(logging.WARNING, logger="tiergate.worker"):
        await OutcomeRecorder._record(job, "outcome", write)
    [warning] = caplog.records
    assert "the rescue runs it again" in warning.getMessage()


async def test_any_other_refusal_is_raised() -> None:
    async def write() -> None:
        exc = ConnectorException()
        exc.__cause__ = psycopg.errors.UndefinedTable("no such table")
        raise exc

    job = Job(id=9, queue=Queue.BATCH, lock=None, queueing_lock=None, task_name="t")
    with pytest.raises(ConnectorException):
        await OutcomeRecorder._record(job, "outcome", write)


def test_procrastinates_complaints_about_a_lost_database_are_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_app.quiet_procrastinate_outages()
    logger = logging.getLogger("procrastinate.utils")
    with caplog.at_level(logging.WARNING, logger="procrastinate"):
        try:
            raise unreachable()
        except ConnectorException as exc:
            logger.exception("listener error: %r", exc)
        try:
            raise ValueError("a bug")
        except ValueError:
            logger.exception("listener error")
    away, bug = caplog.records
    assert away.exc_info is None
    assert "\n" not in away.getMessage()
    assert away.getMessage().endswith("(database unavailable: connection refused)")
    assert bug.exc_info is not None  # anything else keeps its traceback
