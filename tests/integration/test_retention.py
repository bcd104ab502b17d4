"""Retention: finished history past its days goes, in chunks; live work and recent rows stay."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ids import new_id
from app.keys import ApiKey
from app.openai.webhooks import new_secret
from app.settings import Retention
from app.store import retention as retention_sql
from app.store.files import FileStore
from app.store.requests import RequestStore
from app.store.retention import RetentionStore
from app.store.webhooks import WebhookStore
from tests.integration.conftest import insert_file_batch
from tests.integration.test_request_store import submission
from tests.integration.test_webhook_store import EVENTS, add_row, set_status


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        result = await conn.execute(text(statement), params)
        return result.scalar() if result.returns_rows else None


async def age(engine: AsyncEngine, table: str, id: str, days: int) -> None:
    await sql(
        engine,
        f"UPDATE {table} SET created_at = now() - make_interval(days => :d) WHERE id = :id",
        d=days,
        id=id,
    )


async def finished(store: RequestStore, owner: ApiKey, days_old: int) -> str:
    sub = submission(owner, model=f"m-{new_id('')}")
    await store.submit(sub)
    await sql(store.engine, "UPDATE requests SET status = 'completed' WHERE id = :id", id=sub.id)
    await age(store.engine, "requests", sub.id, days_old)
    return sub.id


async def test_finished_requests_past_retention_go_live_and_recent_ones_stay(
    engine: AsyncEngine, owner: ApiKey
):
    store = RequestStore(engine, retention_days=30)
    old = await finished(store, owner, 31)
    recent = await finished(store, owner, 29)
    live = submission(owner)
    await store.submit(live)
    await age(engine, "requests", live.id, 90)  # queued for ever: never pruned

    # Past retention reads as gone at once, before any prune.
    assert await store.get(old, owner.id) is None
    assert await store.get(recent, owner.id) is not None
    assert (await store.get_many([(old, owner.id), (live.id, owner.id)]))[0] is None

    retention = RetentionStore(engine, Retention(requests_days=30))
    assert await retention.count("requests") >= 1
    await retention.prune(max_chunks=100)
    assert await sql(engine, "SELECT count(*) FROM requests WHERE id = :id", id=old) == 0
    for kept in (recent, live.id):
        assert await sql(engine, "SELECT count(*) FROM requests WHERE id = :id", id=kept) == 1
    assert await retention.count("requests") == 0


async def test_an_old_batch_goes_line_chunk_by_line_chunk_then_itself(
    engine: AsyncEngine, owner: ApiKey, monkeypatch: Any
):
    monkeypatch.setattr(retention_sql, "CHUNK", 40)
    batch = await insert_file_batch(engine, owner, "completed")
    await sql(
        engine,
        "INSERT INTO requests (id, batch_id, owner_key_id, custom_id, line_no, endpoint, model,"
        " service_tier, status, body)"
        " SELECT 'batch_req_' || :b || n, :b, :owner, 'c' || n, n, '/v1/responses', 'mock',"
        " 'flex', 'completed', '{}' FROM generate_series(1, 100) AS n",
        b=batch,
        owner=owner.id,
    )
    live = await insert_file_batch(engine, owner, "in_progress")
    for id in (batch, live):
        await age(engine, "batches", id, 40)
    retention = RetentionStore(engine, Retention(requests_days=30))

    chunks = []
    while True:
        rows, lines = await retention.prune_chunk("batches")
        if not rows and not lines:
            break
        chunks.append((rows, lines))
    assert chunks[:3] == [(0, 40), (0, 40), (0, 20)]  # the lines, a chunk at a time ...
    assert (1, 0) in chunks[3:]  # ... then the batch itself
    assert await sql(engine, "SELECT count(*) FROM batches WHERE id = :id", id=batch) == 0
    assert await sql(engine, "SELECT count(*) FROM requests WHERE batch_id = :id", id=batch) == 0
    assert await sql(engine, "SELECT count(*) FROM batches WHERE id = :id", id=live) == 1


async def test_finished_jobs_and_their_events_go_after_events_days(
    engine: AsyncEngine,
):
    job = await sql(
        engine,
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
        " VALUES ('batch', 'tiergate.run_batch', '{}', 'succeeded') RETURNING id",
    )
    todo = await sql(
        engine,
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
        " VALUES ('batch', 'tiergate.run_batch', '{}', 'todo') RETURNING id",
    )
    await sql(
        engine,
        "UPDATE procrastinate_events SET at = now() - interval '8 days' WHERE job_id = ANY(:ids)",
        ids=[job, todo],
    )
    retention = RetentionStore(engine, Retention(events_days=7))
    assert await retention.count("jobs") >= 1
    await retention.prune(max_chunks=100)
    assert await sql(engine, "SELECT count(*) FROM procrastinate_jobs WHERE id = :id", id=job) == 0
    assert (
        await sql(engine, "SELECT count(*) FROM procrastinate_events WHERE job_id = :id", id=job)
        == 0
    )
    assert await sql(engine, "SELECT count(*) FROM procrastinate_jobs WHERE id = :id", id=todo) == 1


async def test_nothing_goes_without_a_retention(engine: AsyncEngine, owner: ApiKey):
    store = RequestStore(engine)
    old = await finished(store, owner, 3650)
    retention = RetentionStore(engine, Retention(requests_days=None, events_days=None))
    assert await retention.count("requests") is None
    assert not await retention.prune(max_chunks=100)
    assert await store.get(old, owner.id) is not None


async def test_expired_files_go_whatever_the_retention_unless_a_live_batch_reads_them(
    engine: AsyncEngine, owner: ApiKey
):
    files = FileStore(engine)
    ids = {}
    for name, expires_s in (("expired", 3600), ("read", 3600), ("later", 3600), ("kept", None)):
        writer = await files.create(
            id=new_id("file-"), owner=owner.id, filename=name, purpose="batch", expires_s=expires_s
        )
        await writer.write(b"{}\n")
        await writer.close()
        ids[name] = writer.id
    await sql(
        engine,
        "UPDATE files SET expires_at = now() - interval '1 second' WHERE id = ANY(:ids)",
        ids=[ids["expired"], ids["read"]],
    )
    batch = await insert_file_batch(engine, owner, "validating")
    await sql(engine, "UPDATE batches SET input_file_id = :f WHERE id = :b", f=ids["read"], b=batch)

    # Expired reads as gone at once, before any sweep.
    assert await files.get(ids["expired"], owner.id) is None
    assert await files.get(ids["later"], owner.id) is not None
    retention = RetentionStore(engine, Retention(requests_days=None, events_days=None))
    assert await retention.count("files") is None  # no files_days: no retention of files ...
    assert await retention.count("expired") == 1  # ... but expiry is the file's own
    assert (await retention.prune(max_chunks=10)).expired == 1
    left = await sql(
        engine,
        "SELECT array_agg(id ORDER BY id) FROM files WHERE id = ANY(:ids)",
        ids=[*ids.values()],
    )
    assert left == sorted([ids["read"], ids["later"], ids["kept"]])
    parts = "SELECT count(*) FROM file_parts WHERE file_id = :id"
    assert await sql(engine, parts, id=ids["expired"]) == 0
    assert await retention.count("expired") == 0


async def test_finished_webhook_deliveries_go_after_their_days_pending_ones_stay(
    engine: AsyncEngine, owner: ApiKey, monkeypatch: Any
):
    monkeypatch.setattr(retention_sql, "CHUNK", 2)
    hooks = WebhookStore(engine)
    endpoint = await hooks.create(owner.id, f"https://{new_id('r')}.example/", EVENTS, new_secret())
    ages = {  # status, days old
        "delivered_old": ("delivered", 31),
        "failed_old": ("failed", 40),
        "delivered_older": ("delivered", 90),
        "pending_old": ("pending", 90),  # a disabled endpoint's: never pruned
        "delivered_recent": ("delivered", 29),
    }
    ids = {}
    for name, (status, days) in ages.items():
        rid = await add_row(engine, owner, background=True)
        await set_status(engine, "requests", rid, "completed")  # the trigger writes the event
        ids[name] = await sql(
            engine,
            "UPDATE webhook_deliveries SET status = :s,"
            " created_at = now() - make_interval(days => :d)"
            " WHERE object_id = :o AND endpoint_id = :e RETURNING id",
            s=status,
            d=days,
            o=rid,
            e=endpoint,
        )
    assert (
        await RetentionStore(engine, Retention(webhook_deliveries_days=None)).count("webhooks")
        is None
    )

    retention = RetentionStore(engine, Retention(webhook_deliveries_days=30))
    assert await retention.count("webhooks") == 3
    chunks = []
    while rows := (await retention.prune_chunk("webhooks"))[0]:
        chunks.append(rows)
    assert chunks == [2, 1]  # bounded chunks, oldest first
    left = await sql(
        engine,
        "SELECT array_agg(id ORDER BY id) FROM webhook_deliveries WHERE endpoint_id = :e",
        e=endpoint,
    )
    assert left == sorted([ids["pending_old"], ids["delivered_recent"]])
    assert await retention.count("webhooks") == 0
    assert not await retention.prune(max_chunks=10)  # nothing left: a pass deletes nothing


async def test_pruning_webhook_deliveries_walks_the_index_of_finished_ones(engine: AsyncEngine):
    async with engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = (
            await conn.execute(
                text(
                    "EXPLAIN (COSTS OFF) SELECT id FROM webhook_deliveries"
                    f" WHERE {retention_sql.DELIVERIES_WHERE}"
                    " ORDER BY created_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
                ),
                {"days": 30},
            )
        ).scalars()
        text_plan = "\n".join(plan)
        await conn.execute(text("RESET enable_seqscan"))
    assert "webhook_deliveries_finished_created_idx" in text_plan, text_plan
    assert "Sort" not in text_plan, text_plan  # read in index order: stops after LIMIT rows
