"""The webhook outbox on real PostgreSQL: the triggers write an event only where they should,
claims respect leases and the per-endpoint bound, failures retry, give up and disable."""

from __future__ import annotations

from sqlalchemy import text

from app.ids import new_id
from app.keys import ApiKey
from app.openai.webhooks import new_secret
from app.store.webhooks import WebhookStore
from tests.integration.conftest import insert_file_batch

EVENTS = ["response.completed", "response.failed", "response.cancelled", "batch.expired"]


async def add_row(engine, owner: ApiKey, *, background: bool, status: str = "pending") -> str:  # type: ignore[no-untyped-def]
    rid = new_id("resp_")
    async with engine.connect() as conn:
        await conn.execute(
            text(
                "INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier,"
                " background, status, body) VALUES (:id, :owner, '/v1/responses', 'm', 'flex',"
                " :background, :status, '{}')"
            ),
            {"id": rid, "owner": owner.id, "background": background, "status": status},
        )
    return rid


async def set_status(engine, table: str, id: str, status: str) -> None:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        await conn.execute(
            text(f"UPDATE {table} SET status = :s WHERE id = :id"), {"s": status, "id": id}
        )


async def events(engine) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_type, object_id FROM webhook_deliveries ORDER BY id")
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_triggers_write_events_of_final_background_rows_and_batches(engine, owner):
    hooks = WebhookStore(engine)
    background = await add_row(engine, owner, background=True)
    await set_status(engine, "requests", background, "completed")
    assert await events(engine) == []  # no endpoint: nothing written
    await hooks.create(owner.id, "https://a.example/", EVENTS, new_secret())
    done = await add_row(engine, owner, background=True)
    plain = await add_row(engine, owner, background=False)
    cancelled = await add_row(engine, owner, background=True)
    await set_status(engine, "requests", done, "in_progress")
    await set_status(engine, "requests", done, "expired")
    await set_status(engine, "requests", done, "expired")  # no change: no second event
    await set_status(engine, "requests", plain, "completed")
    await set_status(engine, "requests", cancelled, "cancelled")
    hit = await add_row(engine, owner, background=True, status="completed")  # a cache hit
    batch = await insert_file_batch(engine, owner, "in_progress")
    await set_status(engine, "batches", batch, "expired")
    assert await events(engine) == [
        ("response.failed", done),
        ("response.cancelled", cancelled),
        ("response.completed", hit),
        ("batch.expired", batch),
    ]


async def test_claims_lease_bound_per_endpoint_and_failures_retry_then_disable(engine, owner):
    hooks = WebhookStore(engine)
    async with engine.connect() as conn:  # the module's database: the other test's are gone
        await conn.execute(text("DELETE FROM webhook_endpoints"))
    endpoint = await hooks.create(owner.id, "https://b.example/", EVENTS, new_secret())
    for _ in range(5):
        await set_status(
            engine, "requests", await add_row(engine, owner, background=True), "completed"
        )
    first = await hooks.claim({}, per_endpoint=2, total=10, lease_s=30)
    assert len(first) == 2 and {c.attempts for c in first} == {1}
    assert len(await hooks.claim({endpoint: 2}, per_endpoint=2, total=10, lease_s=30)) == 0
    others = await hooks.claim({}, per_endpoint=10, total=10, lease_s=30)
    assert len(others) == 3  # the two claimed ones are leased
    await hooks.delivered(first[0].id, 1, 200)
    failed = await hooks.failed(
        first[1].id, 1, status=500, error="HTTP 500", delay_s=0, give_up_s=3600, disable_s=3600
    )
    assert failed is not None and not failed.given_up and failed.disabled is None
    again = await hooks.claim({}, per_endpoint=10, total=10, lease_s=30)
    assert [(c.id, c.attempts, c.event_id) for c in again] == [(first[1].id, 2, first[1].event_id)]
    assert (
        await hooks.failed(  # a stale attempt number changes nothing
            first[1].id, 1, status=500, error="late", delay_s=0, give_up_s=3600, disable_s=3600
        )
        is None
    )
    gone = await hooks.failed(
        first[1].id, 2, status=None, error="refused", delay_s=10, give_up_s=0, disable_s=0
    )
    assert gone is not None and gone.given_up
    assert gone.disabled is not None and gone.disabled.startswith("failing since ")
    [listed] = await hooks.endpoints(owner.id)
    assert not listed.enabled and listed.delivered == 1 and listed.failed == 1
    assert await hooks.claim({}, per_endpoint=10, total=10, lease_s=0) == []  # disabled
    assert await hooks.set_enabled(endpoint, True, owner.id)
    async with engine.connect() as conn:  # the three leases lapse
        await conn.execute(text("UPDATE webhook_deliveries SET next_attempt_at = now()"))
    assert len(await hooks.claim({}, per_endpoint=10, total=10, lease_s=0)) == 3
