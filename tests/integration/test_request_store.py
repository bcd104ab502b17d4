"""Request rows: guarded transitions, expiry, the realtime reaper (the queue: test_flex_queue)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import text

from app.ids import request_id
from app.keys import ApiKey
from app.store.outcomes import Outcome
from app.store.realtime import RealtimeEnd, RealtimeStart, RealtimeTracker, RealtimeWhole
from app.store.requests import RequestStore, Submission
from app.store.sweeps import RequestSweeps
from app.token_usage import TokenUsage
from app.vocabulary import Priority, Status
from tests.integration.conftest import insert_file_batch


def submission(
    owner: ApiKey, window_s: int = 3600, priority: int = Priority.FLEX, model: str = "mock"
) -> Submission:
    return Submission(
        id=request_id("/v1/responses"),
        owner=owner.id,
        endpoint="/v1/responses",
        model=model,
        tier="flex" if priority == Priority.FLEX else "default",
        background=True,
        stream=False,
        body={"model": "mock", "input": "x"},
        window_s=window_s,
        priority=priority,
    )


async def test_a_late_worker_cannot_overwrite_a_cancel(store: RequestStore, owner: ApiKey):
    sub = submission(owner)
    await store.submit(sub)
    (claimed,) = await store.claim({"mock": 1}, "wk_a")
    assert claimed.id == sub.id and claimed.attempts == 1
    assert await store.cancel(sub.id, owner.id)
    assert not await store.finish(
        sub.id, 1, Outcome(status=Status.COMPLETED, response_body={"x": 1})
    )
    row = await store.get(sub.id, owner.id)
    assert row.status == "cancelled" and row.response_body is None
    assert await store.claim({"mock": 1}, "wk_a") == []  # final rows are never claimed again


async def test_attempt_number_fences_a_stale_worker(store: RequestStore, owner: ApiKey):
    sub = submission(owner)
    await store.submit(sub)
    await store.claim({"mock": 1}, "wk_a")  # worker A, presumed dead ...
    assert await store.release("wk_a") == [sub.id]  # ... its row given back
    (second,) = await store.claim({"mock": 1}, "wk_b")
    assert second.attempts == 2
    assert not await store.finish(sub.id, 1, Outcome(status=Status.COMPLETED))  # A wakes up late
    assert await store.finish(sub.id, 2, Outcome(status=Status.COMPLETED))


async def test_other_owner_cannot_cancel_or_delete(store: RequestStore, owner: ApiKey):
    sub = submission(owner)
    await store.submit(sub)
    assert not await store.cancel(sub.id, "key_someone_else")
    assert not await store.delete(sub.id, "key_someone_else")
    assert await store.get(sub.id, "key_someone_else") is None
    assert (await store.get(sub.id, owner.id)).status == "pending"


async def test_get_many_reads_in_order_and_only_the_owners_rows(store: RequestStore, owner: ApiKey):
    first, second = submission(owner), submission(owner)
    await store.submit(first)
    await store.submit(second)
    rows = await store.get_many(
        [
            (second.id, owner.id),
            (first.id, "key_someone_else"),  # the id is real, the owner is not
            ("resp_missing", owner.id),
            (first.id, owner.id),
            (second.id, owner.id),  # asked twice, answered twice
        ]
    )
    assert [row.id if row else None for row in rows] == [
        second.id,
        None,
        None,
        first.id,
        second.id,
    ]


async def test_overdue_pending_work_expires(
    store: RequestStore, sweeps: RequestSweeps, owner: ApiKey
):
    sub = submission(owner, window_s=1)
    await store.submit(sub)
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE requests SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": sub.id},
        )
    assert sub.id in [row.id for row in await sweeps.expire_overdue()]
    row = await store.get(sub.id, owner.id)
    assert row.status == "expired"
    assert await store.final_among([sub.id, "resp_unknown"]) == [sub.id]


def realtime_start(owner: ApiKey, gateway_id: str | None = None) -> RealtimeStart:
    """The tracking row of a new realtime call."""
    return RealtimeStart(
        id=request_id("/v1/chat/completions"),
        owner=owner.id,
        endpoint="/v1/chat/completions",
        model="mock",
        stream=False,
        body={"model": "mock"},
        gateway_id=gateway_id,
        at=dt.datetime.now(dt.UTC),
    )


async def test_realtime_rows_of_a_dead_gateway_are_reaped(
    store: RequestStore, tracker: RealtimeTracker, sweeps: RequestSweeps, owner: ApiKey
):
    start = realtime_start(owner)
    rid = start.id
    await tracker.track([start])
    assert rid not in await sweeps.reap_realtime(60)
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE requests SET started_at = now() - interval '2 minutes' WHERE id = :id"),
            {"id": rid},
        )
    assert rid in await sweeps.reap_realtime(60)
    row = await store.get(rid, owner.id)
    assert row.status == "failed" and row.error["code"] == "gateway_interrupted"


async def test_rows_of_a_live_gateway_are_never_reaped(
    store: RequestStore, tracker: RealtimeTracker, sweeps: RequestSweeps, owner: ApiKey
):
    from app.store.presence import Presence
    from app.vocabulary import ProcessKind

    presence = Presence(store.engine, kind=ProcessKind.GATEWAY, every_s=3600)
    await presence.start()
    start = realtime_start(owner, gateway_id=presence.id)
    rid = start.id
    try:
        await tracker.track([start])
        async with store.engine.connect() as conn:  # a long stream: started long ago
            await conn.execute(
                text("UPDATE requests SET started_at = now() - interval '1 hour' WHERE id = :id"),
                {"id": rid},
            )
        assert rid not in await sweeps.reap_realtime(30)  # its gateway is alive
        async with store.engine.connect() as conn:  # the gateway falls silent
            await conn.execute(
                text(
                    "UPDATE processes SET last_seen_at = now() - interval '1 minute' WHERE id = :id"
                ),
                {"id": presence.id},
            )
        assert rid in await sweeps.reap_realtime(30)
    finally:
        await presence.stop()


async def test_realtime_starts_and_ends_share_one_statement(
    store: RequestStore, tracker: RealtimeTracker, owner: ApiKey
):
    first_start, second_start = realtime_start(owner), realtime_start(owner)
    first, second = first_start.id, second_start.id
    await tracker.track([first_start])
    done = Outcome(
        status=Status.COMPLETED,
        response_status=200,
        response_body={"ok": True},
        usage=TokenUsage(input=5, output=2, total=7, cached=3, reasoning=1, estimated=True),
        cost_usd=Decimal("0.000012345678901234"),
    )
    await tracker.track([second_start, RealtimeEnd(first, done)])  # both kinds at once
    one, two = await store.get(first, owner.id), await store.get(second, owner.id)
    assert (one.status, one.total_tokens, one.response_body) == (
        "completed",
        7,
        {"ok": True},
    )
    stored = [one.input_tokens, one.output_tokens, one.cached_tokens]
    stored += [one.reasoning_tokens, one.usage_estimated, one.cost_usd]
    assert stored == [5, 2, 3, 1, True, Decimal("0.000012345678901234")]
    assert two.status == "in_progress"


async def test_a_call_that_ended_before_its_row_is_one_final_insert(
    store: RequestStore, tracker: RealtimeTracker, owner: ApiKey
):
    """A whole answer's row is written once, final, with the call's start time; a start, an
    end and a whole row share one statement, and costs reach the key's budgeted spend."""
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET budget_usd = 10, budget_period = 'total' WHERE id = :id"),
            {"id": owner.id},
        )
    cost = Decimal("0.25")
    done = Outcome(
        status=Status.COMPLETED,
        response_status=200,
        response_body={"ok": True},
        usage=TokenUsage(input=5, output=2, total=7),
        cost_usd=cost,
        deployment="default",
    )
    failed = Outcome(status=Status.FAILED, error={"code": "upstream_503", "message": "busy"})
    earlier, begun = realtime_start(owner), realtime_start(owner)
    await tracker.track([earlier])
    whole, broken = realtime_start(owner), realtime_start(owner)
    started_at = whole.at
    await tracker.track(
        [
            begun,
            RealtimeEnd(earlier.id, done),
            RealtimeWhole(whole, done),
            RealtimeWhole(broken, failed),
        ]
    )
    one = await store.get(whole.id, owner.id)
    assert (one.status, one.response_body, one.total_tokens, one.cost_usd) == (
        "completed",
        {"ok": True},
        7,
        cost,
    )
    assert one.created_at == one.started_at == started_at and one.finished_at is not None
    assert (one.attempts, one.service_tier, one.deployment) == (1, "default", "default")
    two = await store.get(broken.id, owner.id)
    assert two.status == "failed" and two.error == {"code": "upstream_503", "message": "busy"}
    assert (await store.get(begun.id, owner.id)).status == "in_progress"
    async with store.engine.connect() as conn:
        spent = await conn.execute(
            text("SELECT spent_usd FROM key_spend WHERE key_id = :id"), {"id": owner.id}
        )
        assert spent.scalar_one() == 2 * cost  # the end's and the whole row's


async def test_batch_lines_and_start_are_one_transaction(engine, owner: ApiKey):
    """The COPY of a batch's lines commits with the batch's start, or not at all."""
    import datetime as dt

    from app.ids import new_id
    from app.store.batches import COPY_COLUMNS, BatchStore

    batches = BatchStore(engine)
    batch_id = await insert_file_batch(engine, owner, "cancelling")
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    record = (
        new_id("batch_req_"),
        batch_id,
        owner.id,
        "c1",
        1,
        "/v1/responses",
        "mock",
        "flex",
        "pending",
        '{"model": "mock", "input": "x"}',
        expires,
    )
    assert len(record) == len(COPY_COLUMNS)
    assert not await batches.start(batch_id, [record], jobs=1)  # cancelled meanwhile
    async with engine.connect() as conn:
        lines = (
            await conn.execute(
                text("SELECT count(*) FROM requests WHERE batch_id = :id"), {"id": batch_id}
            )
        ).scalar_one()
        status = (
            await conn.execute(text("SELECT status FROM batches WHERE id = :id"), {"id": batch_id})
        ).scalar_one()
    assert (lines, status) == (0, "cancelled")  # no orphan lines were left behind


async def test_abandoned_uploads_are_pruned(engine, owner: ApiKey):
    from app.store.files import FileStore

    files = FileStore(engine)
    writer = await files.create(id="file-abandoned", owner=owner.id, filename="f", purpose="batch")
    await writer.write(b"half of it")
    done = await files.create(id="file-finished", owner=owner.id, filename="g", purpose="batch")
    await done.write(b"all of it")
    await done.close()
    assert await files.prune_abandoned(3600) == []  # too recent to be abandoned
    async with engine.connect() as conn:
        await conn.execute(text("UPDATE files SET created_at = now() - interval '2 hours'"))
    assert await files.prune_abandoned(3600) == ["file-abandoned"]
    assert await files.get("file-finished", owner.id) is not None
