"""What the sweeps end, they say by model, tier and path (the workers count it in
tiergate_deferred_outcomes_total): from the statements that end the rows, nothing else."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from app.ids import new_id
from app.keys import ApiKey
from app.store.batches import BatchStore
from app.store.orphans import MAX_RUNS, OrphanStore
from app.store.outcomes import Ended
from app.vocabulary import Task
from tests.integration.conftest import insert_file_batch


async def started_batch(engine, owner: ApiKey, lines: int) -> str:  # type: ignore[no-untyped-def]
    """An in-progress batch of ``lines`` pending lines of model ``mock``."""
    batches = BatchStore(engine)
    batch_id = await insert_file_batch(engine, owner, "validating")
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    records = [
        (new_id("batch_req_"), batch_id, owner.id, f"c{i}", i, "/v1/responses", "mock",
         "flex", "pending", '{"model": "mock", "input": "x"}', expires)
        for i in range(lines)
    ]  # fmt: skip
    assert await batches.start(batch_id, records, jobs=1)
    return batch_id


async def test_an_overdue_batchs_lines_come_back_counted_by_model(engine, owner: ApiKey):
    batch_id = await started_batch(engine, owner, 3)
    async with engine.connect() as conn:
        await conn.execute(
            text("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": batch_id},
        )

    expired = await BatchStore(engine).expire_overdue()

    assert expired.batches == [batch_id]  # finalized (one row per batch, as before)
    assert Ended(id=None, model="mock", tier="batch", executor="none", rows=3) in expired.lines
    again = await BatchStore(engine).expire_overdue()
    assert not any(e.rows for e in again.lines if e.model == "mock")  # counted once


async def test_lines_given_up_by_the_safety_net_come_back_as_ended(engine, owner: ApiKey):
    batch_id = await started_batch(engine, owner, 2)
    async with engine.connect() as conn:
        # Both lines claimed MAX_RUNS times by run jobs that died; no job is alive.
        await conn.execute(
            text(
                "UPDATE requests SET status = 'in_progress', attempts = :n, job_id = -1"
                " WHERE batch_id = :id"
            ),
            {"id": batch_id, "n": MAX_RUNS},
        )
        await conn.execute(
            text(
                "UPDATE procrastinate_jobs SET status = 'failed'"
                " WHERE task_name = :task AND args->>'batch_id' = :id"
            ),
            {"id": batch_id, "task": Task.RUN_BATCH},
        )

    requeued = await OrphanStore(engine).requeue()

    gave_up = [e for e in requeued.failed if e.model == "mock" and e.tier == "batch"]
    assert len(gave_up) == 2 and all(e.rows == 1 and e.executor == "none" for e in gave_up)
    assert {e.id for e in gave_up} <= set(requeued.lines)
