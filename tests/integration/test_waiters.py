"""The LISTEN hub: wakes waiters on NOTIFY, re-checks after a lost connection."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.gateway.waiters import WaiterHub
from app.store.dburl import DatabaseURL
from app.store.requests import RequestStore
from app.vocabulary import Channel


async def start_hub(database: DatabaseURL, store: RequestStore, recheck_s: float) -> WaiterHub:
    revoked: list[str] = []
    hub = WaiterHub(
        database, final_among=store.final_among, on_key_revoked=revoked.append, recheck_s=recheck_s
    )
    await hub.start()
    await asyncio.wait_for(hub.connected.wait(), 10)
    return hub


async def notify(store: RequestStore, payload: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": Channel.DONE, "p": payload})


async def test_notify_wakes_exactly_the_right_waiter(database: DatabaseURL, store: RequestStore):
    hub = await start_hub(database, store, recheck_s=3600)
    try:
        async with hub.waiter("resp_a") as wait_a, hub.waiter("resp_b") as wait_b:
            await notify(store, "resp_a")
            assert await wait_a(5)
            assert not await wait_b(0.2)
            assert hub.waiting == 2
        assert hub.waiting == 0
    finally:
        await hub.stop()


async def test_lost_connection_is_reestablished(database: DatabaseURL, store: RequestStore):
    hub = await start_hub(database, store, recheck_s=3600)  # only NOTIFY can wake
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            )
        # A notification sent while the hub reconnects is lost by design (the re-check
        # covers it), and one sent before the terminated backend is gone may still arrive on
        # the old connection; keep notifying until one lands on the new connection.
        for _ in range(50):
            async with hub.waiter("resp_after") as wait:
                await notify(store, "resp_after")
                if await wait(0.2) and hub.connections == 2:
                    break
        else:
            raise AssertionError("no notification arrived after the reconnect")
    finally:
        await hub.stop()


async def test_recheck_finds_a_completion_whose_notify_was_missed(
    database: DatabaseURL, store: RequestStore, owner
):
    from tests.integration.test_request_store import submission

    sub = submission(owner)
    await store.submit(sub)
    hub = await start_hub(database, store, recheck_s=0.2)
    try:
        waiting = asyncio.create_task(hub.wait(sub.id, 10))
        await asyncio.sleep(0)  # let it register
        async with store.engine.begin() as conn:  # finish without NOTIFY
            await conn.execute(
                text("UPDATE requests SET status = 'completed' WHERE id = :id"), {"id": sub.id}
            )
        assert await asyncio.wait_for(waiting, 5)
    finally:
        await hub.stop()
