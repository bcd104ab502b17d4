"""The safety net: live work whose job ended is queued again; live jobs are left alone."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from app.ids import new_id
from app.keys import ApiKey
from app.store.batches import COPY_COLUMNS, BatchStore
from app.store.orphans import MAX_RUNS, OrphanStore
from app.vocabulary import Task
from tests.integration.conftest import insert_file_batch


async def scalar(engine, sql: str, **params):  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def fail_job(engine, job_id: int) -> None:  # type: ignore[no-untyped-def]
    """What procrastinate records when a job raised and had no retry left."""
    async with engine.connect() as conn:
        await conn.execute(
            text("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = :id"), {"id": job_id}
        )


async def test_lines_of_a_failed_run_job_go_back_and_the_batch_gets_a_run_job(
    engine, owner: ApiKey
):
    batches = BatchStore(engine)
    batch_id = await insert_file_batch(engine, owner, "validating")
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    records = [
        (new_id("batch_req_"), batch_id, owner.id, f"c{i}", i, "/v1/responses", "mock",
         "flex", "pending", '{"model": "mock", "input": "x"}', expires)
        for i in (1, 2)
    ]  # fmt: skip
    assert len(records[0]) == len(COPY_COLUMNS)
    assert await batches.start(batch_id, records, jobs=1)
    run_job = await scalar(
        engine,
        "SELECT id FROM procrastinate_jobs WHERE task_name = :task AND args->>'batch_id' = :b",
        task=Task.RUN_BATCH,
        b=batch_id,
    )
    claimed = await batches.claim(batch_id, run_job, 1)
    assert len(claimed) == 1

    assert not await OrphanStore(engine).requeue()  # its job is alive: nothing to do

    await fail_job(engine, run_job)
    requeued = await OrphanStore(engine).requeue()

    assert requeued.lines == [claimed[0].id]
    assert requeued.batches == [batch_id]
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM requests WHERE batch_id = :b AND status = 'pending'"
            " AND job_id IS NULL",
            b=batch_id,
        )
        == 2
    )
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = :task"
            " AND args->>'batch_id' = :b AND status = 'todo'",
            task=Task.RUN_BATCH,
            b=batch_id,
        )
        == 1
    )


async def test_a_batch_whose_jobs_keep_failing_is_given_up(engine, owner: ApiKey):
    batch_id = await insert_file_batch(engine, owner, "validating")
    async with engine.connect() as conn:
        await conn.execute(
            text(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
                " SELECT 'batch', 'tiergate.validate_batch',"
                " jsonb_build_object('batch_id', CAST(:id AS text)), 'failed'"
                " FROM generate_series(1, :n)"
            ),
            {"id": batch_id, "n": MAX_RUNS},
        )

    requeued = await OrphanStore(engine).requeue()

    assert batch_id not in requeued.batches
    status, code = await scalar(
        engine,
        "SELECT ROW(status, errors->'data'->0->>'code') FROM batches WHERE id = :id",
        id=batch_id,
    )
    assert (status, code) == ("failed", "processing_failed")
