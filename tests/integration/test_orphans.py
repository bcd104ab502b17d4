"""The safety net: live work whose job ended is queued again; live jobs are left alone."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from app.ids import new_id
from app.store.batches import COPY_COLUMNS, BatchStore
from app.store.keys import ApiKey
from app.store.orphans import MAX_RUNS, OrphanStore
from app.store.requests import RequestStore
from app.vocabulary import Task
from tests.integration.conftest import insert_file_batch
from tests.integration.test_request_store import submission


async def scalar(engine, sql: str, **params):  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def fail_job(engine, job_id: int) -> None:  # type: ignore[no-untyped-def]
    """What procrastinate records when a job raised and had no retry left."""
    async with engine.connect() as conn:
        await conn.execute(
            text("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = :id"), {"id": job_id}
        )


async def test_a_request_whose_job_failed_gets_a_new_job(
    engine, store: RequestStore, owner: ApiKey
):
    orphan, healthy = submission(owner), submission(owner)
    await store.submit(orphan)
    await store.submit(healthy)
    assert await store.claim(orphan.id) is not None  # in_progress when its job failed
    old_job = await scalar(engine, "SELECT job_id FROM requests WHERE id = :id", id=orphan.id)
    await fail_job(engine, old_job)

    requeued = await OrphanStore(engine).requeue()

    assert requeued.requests == [orphan.id]
    status, new_job, job_status, queue = (
        await scalar(
            engine,
            "SELECT ROW(r.status, r.job_id, j.status::text, j.queue_name) FROM requests r"
            " JOIN procrastinate_jobs j ON j.id = r.job_id WHERE r.id = :id",
            id=orphan.id,
        )
    )  # fmt: skip
    assert (status, job_status, queue) == ("pending", "todo", "flex")
    assert int(new_job) != old_job
    assert not (await OrphanStore(engine).requeue()).requests  # once is enough


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

    assert requeued.lines == [claimed[0]["id"]]
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


async def test_a_request_that_keeps_failing_is_given_up(engine, store: RequestStore, owner: ApiKey):
    doomed = submission(owner)
    await store.submit(doomed)
    async with engine.connect() as conn:  # as if it had been run (and crashed) MAX_RUNS times
        await conn.execute(
            text("UPDATE requests SET status = 'in_progress', attempts = :n WHERE id = :id"),
            {"n": MAX_RUNS, "id": doomed.id},
        )
    await fail_job(
        engine, await scalar(engine, "SELECT job_id FROM requests WHERE id = :id", id=doomed.id)
    )

    requeued = await OrphanStore(engine).requeue()

    assert requeued.gave_up == [doomed.id] and doomed.id not in requeued.requests
    row = await store.get(doomed.id, owner.id)
    assert row["status"] == "failed" and row["error"]["code"] == "processing_failed"


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
