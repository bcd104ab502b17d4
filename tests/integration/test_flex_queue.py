"""The table as the queue of single deferred requests: accept, claim, retry, finish, rescue."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text

from app.keys import ApiKey
from app.store.dburl import DatabaseURL
from app.store.outcomes import Outcome
from app.store.presence import Presence
from app.store.requests import Finish, RequestStore
from app.store.sweeps import MAX_RUNS, RequestSweeps
from app.token_usage import TokenUsage
from app.vocabulary import Channel, Priority, ProcessKind, Status
from tests.integration.test_request_store import submission


class Notifications:
    """What arrives on one channel, as a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.queue.put_nowait(payload)

    async def next(self) -> str:
        return await asyncio.wait_for(self.queue.get(), 10)

    async def until(self, payload: str) -> None:
        """Wait for ``payload`` (other tests' rows may notify too)."""
        while await self.next() != payload:
            pass


async def listening(database: DatabaseURL, channel: str) -> AsyncIterator[Notifications]:
    conn = await asyncpg.connect(**database.asyncpg_connect_args())
    received = Notifications()
    await conn.add_listener(channel, received)
    try:
        yield received
    finally:
        await conn.close()


@pytest.fixture
async def work(database: DatabaseURL) -> AsyncIterator[Notifications]:
    async for received in listening(database, Channel.WORK):
        yield received


@pytest.fixture
async def done(database: DatabaseURL) -> AsyncIterator[Notifications]:
    async for received in listening(database, Channel.DONE):
        yield received


@pytest.fixture
def model() -> str:
    """A model of the test's own: the module's tests share a database, and claims are per model."""
    return f"model-{secrets.token_hex(4)}"


async def sql(store: RequestStore, statement: str, **params: object) -> None:
    async with store.engine.connect() as conn:
        await conn.execute(text(statement), params)


async def test_accepting_is_one_row_and_wakes_the_workers(
    model: str, store: RequestStore, owner: ApiKey, work: Notifications
):
    subs = [submission(owner, model=model) for _ in range(3)]
    await store.submit_many(subs)
    assert await work.next() == model  # one notification per model and statement
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT status, priority, batch_id, job_id, attempts FROM requests"
                    " WHERE id = ANY(:ids)"
                ),
                {"ids": [s.id for s in subs]},
            )
        ).all()
        jobs = (await conn.execute(text("SELECT count(*) FROM procrastinate_jobs"))).scalar()
    assert [tuple(r) for r in rows] == [("pending", 0, None, None, 0)] * 3
    assert jobs == 0  # a request is not a job


async def test_claim_takes_background_first_then_the_oldest(
    model: str, store: RequestStore, owner: ApiKey
):
    flex = [submission(owner, model=model) for _ in range(3)]
    for sub in flex:
        await store.submit(sub)
    background = submission(owner, priority=Priority.BACKGROUND, model=model)
    await store.submit(background)

    first = await store.claim({model: 2}, "wk_a")
    assert {r.id for r in first} == {background.id, flex[0].id}  # chosen by priority, then age
    assert all(r.attempts == 1 and not r.expired for r in first)
    rest = await store.claim({model: 5, "other-model": 3}, "wk_b")
    assert sorted(r.id for r in rest) == sorted(s.id for s in flex[1:])
    assert await store.claim({model: 5}, "wk_c") == []
    row = await store.get(background.id, owner.id)
    assert row.status == "in_progress" and row.claimed_by == "wk_a"


async def test_concurrent_claims_never_take_the_same_row(
    model: str, store: RequestStore, owner: ApiKey
):
    subs = [submission(owner, model=model) for _ in range(40)]
    await store.submit_many(subs)
    claims = await asyncio.gather(*(store.claim({model: 7}, f"wk_{i}") for i in range(8)))
    claimed = [row.id for rows in claims for row in rows]
    assert len(claimed) == len(set(claimed)) == 40


async def test_a_retry_is_claimable_only_once_due(model: str, store: RequestStore, owner: ApiKey):
    sub = submission(owner, model=model)
    await store.submit(sub)
    await store.claim({model: 1}, "wk_a")
    assert await store.requeue(sub.id, 1, {"code": "upstream_503", "message": "x"}, 30.0)
    assert await store.claim({model: 1}, "wk_a") == []  # backing off
    next_in_s = await store.promote_due()
    assert next_in_s is not None and 25 < next_in_s <= 30
    await sql(store, "UPDATE requests SET not_before = now() WHERE id = :id", id=sub.id)
    assert await store.promote_due() is None  # promoted; nothing else waits
    (again,) = await store.claim({model: 1}, "wk_b")
    assert again.id == sub.id and again.attempts == 2
    # the stale attempt can no longer requeue or finish it
    assert not await store.requeue(sub.id, 1, {"code": "late"}, 0.0)
    assert not await store.finish(sub.id, 1, Outcome(status=Status.COMPLETED))


async def test_results_of_many_attempts_are_one_statement_that_wakes_their_clients(
    model: str, store: RequestStore, owner: ApiKey, done: Notifications
):
    subs = [submission(owner, model=model) for _ in range(3)]
    await store.submit_many(subs)
    rows = await store.claim({model: 3}, "wk_a")
    await store.cancel(subs[2].id, owner.id)
    assert await done.next() == subs[2].id
    stored = await store.finish_many(
        [
            Finish(
                row.id,
                row.attempts,
                Outcome(status=Status.COMPLETED, response_body={"n": i}, usage=TokenUsage(total=i)),
            )
            for i, row in enumerate(rows)
        ]
    )
    assert sorted(stored) == sorted(s.id for s in subs[:2])  # the cancel stands
    assert {await done.next(), await done.next()} == {subs[0].id, subs[1].id}
    first = await store.get(rows[0].id, owner.id)
    assert first.status == "completed" and first.response_body == {"n": 0}


async def test_rows_of_a_dead_worker_go_back_to_the_queue(
    model: str, store: RequestStore, sweeps: RequestSweeps, owner: ApiKey, work: Notifications
):
    alive = Presence(store.engine, kind=ProcessKind.WORKER, every_s=3600)
    dead = Presence(store.engine, kind=ProcessKind.WORKER, every_s=3600)
    await alive.start()
    await dead.start()
    try:
        subs = [submission(owner, model=model) for _ in range(2)]
        await store.submit_many(subs)
        assert await work.next() == model
        (mine,) = await store.claim({model: 1}, alive.id)
        (theirs,) = await store.claim({model: 1}, dead.id)
        rescued, _ = await sweeps.rescue_claimed(30)
        assert mine.id not in rescued and theirs.id not in rescued  # both are alive
        await sql(
            store,
            "UPDATE processes SET last_seen_at = now() - interval '1 minute' WHERE id = :id",
            id=dead.id,
        )
        rescued, _ = await sweeps.rescue_claimed(30)
        assert theirs.id in rescued and mine.id not in rescued
        await work.until(model)  # the workers are told
        row = await store.get(theirs.id, owner.id)
        assert row.status == "pending" and row.claimed_by is None
        assert (await store.get(mine.id, owner.id)).status == "in_progress"
    finally:
        await alive.stop()
        await dead.stop()


async def test_a_request_whose_workers_keep_dying_is_given_up(
    model: str, store: RequestStore, sweeps: RequestSweeps, owner: ApiKey, done: Notifications
):
    doomed = submission(owner, model=model)
    await store.submit(doomed)
    await sql(  # as if it had been claimed MAX_RUNS times by workers that died
        store,
        "UPDATE requests SET status = 'in_progress', attempts = :n, claimed_by = 'wk_gone'"
        " WHERE id = :id",
        n=MAX_RUNS,
        id=doomed.id,
    )
    rescued, gave_up = await sweeps.rescue_claimed(30)
    assert doomed.id in [row.id for row in gave_up] and doomed.id not in rescued
    await done.until(doomed.id)  # a blocking client learns at once
    row = await store.get(doomed.id, owner.id)
    assert row.status == "failed" and row.error["code"] == "processing_failed"


async def test_a_stopping_worker_gives_back_only_its_own_rows(
    model: str, store: RequestStore, owner: ApiKey
):
    await store.submit_many([submission(owner, model=model) for _ in range(3)])
    mine = await store.claim({model: 2}, "wk_me")
    (other,) = await store.claim({model: 1}, "wk_other")
    assert sorted(await store.release("wk_me")) == sorted(r.id for r in mine)
    assert (await store.get(other.id, owner.id)).status == "in_progress"


async def test_each_retried_attempt_keeps_its_error(model: str, store: RequestStore, owner: ApiKey):
    sub = submission(owner, model=model)
    await store.submit(sub)
    await store.claim({model: 1}, "wk_a")
    first = {"code": "upstream_503", "message": "mock status 503"}
    assert await store.requeue(sub.id, 1, first, 0.0, deployment="gpu-a")
    await sql(store, "UPDATE requests SET not_before = NULL WHERE id = :id", id=sub.id)
    await store.claim({model: 1}, "wk_a")
    # no deployment had room: not an attempt, so not in the history
    assert await store.requeue(sub.id, 2, {"code": "no_capacity"}, 0.0, counted=False)
    await sql(store, "UPDATE requests SET not_before = NULL WHERE id = :id", id=sub.id)
    await store.claim({model: 1}, "wk_a")
    second = {"code": "upstream_timeout", "message": "slow"}
    assert await store.requeue(sub.id, 2, second, 0.0, deployment="gpu-b")
    async with store.engine.connect() as conn:
        (history,) = (
            await conn.execute(
                text("SELECT attempt_errors FROM requests WHERE id = :id"), {"id": sub.id}
            )
        ).one()
    assert [(h["attempt"], h["error"], h["deployment"]) for h in history] == [
        (1, first, "gpu-a"),
        (2, second, "gpu-b"),
    ]
