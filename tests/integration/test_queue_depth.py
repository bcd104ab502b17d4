"""/metrics' queue depth: counted by one process at a time, read by every scrape."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.gateway.queue_depth import QueueDepth
from app.keys import ApiKey
from app.store.queue_depth import QueueDepthStore
from app.store.requests import RequestStore
from tests.integration.test_request_store import submission


def pending(depth: list[tuple[str, str, str, int]], model: str) -> int:
    return sum(n for m, _tier, status, n in depth if m == model and status == "pending")


async def backdate(engine: AsyncEngine, seconds: float) -> None:
    """Pretend the last count was taken ``seconds`` ago."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE queue_depth_counted SET counted_at = now() - make_interval(secs => :s)"),
            {"s": seconds},
        )


async def test_processes_counting_at_once_count_once(
    engine: AsyncEngine, store: RequestStore, owner: ApiKey
):
    await store.submit(submission(owner, model="depth-once"))
    await backdate(engine, 3600)
    counters = [QueueDepthStore(engine) for _ in range(4)]
    counted = await asyncio.gather(*(c.count_if_stale(60) for c in counters))
    assert sorted(counted) == [False, False, False, True]
    assert await counters[0].count_if_stale(60) is False  # fresh now
    last = await counters[0].read()
    assert pending(last.depth, "depth-once") == 1
    assert last.age_s is not None and 0 <= last.age_s < 60


async def test_a_scrape_reads_the_stored_count_and_steps_in_only_when_nobody_counts(
    engine: AsyncEngine, store: RequestStore, owner: ApiKey
):
    await store.submit(submission(owner, model="depth-model"))
    await backdate(engine, 3600)
    await QueueDepthStore(engine).count_if_stale(0)  # as a worker's maintenance does
    await store.submit(submission(owner, model="depth-model"))

    scrape = QueueDepth(engine, max_age_s=60, timeout_s=10)
    counted = await scrape.read()
    assert pending(counted.depth, "depth-model") == 1  # the stored count, not a new one
    assert scrape._counting is None

    await backdate(engine, 3 * 60)  # no worker counted for three periods: the gateway does
    assert pending((await scrape.read()).depth, "depth-model") == 1  # at once, the last count
    assert scrape._counting is not None
    await scrape._counting
    assert pending((await scrape.read()).depth, "depth-model") == 2
    await scrape.stop()


async def test_the_first_scrape_of_a_never_counted_queue_waits_for_a_count(
    engine: AsyncEngine, store: RequestStore, owner: ApiKey
):
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE queue_depth_counted SET counted_at = NULL"))
    await store.submit(submission(owner, model="depth-first"))
    scrape = QueueDepth(engine, max_age_s=60, timeout_s=10)
    counted = await scrape.read()
    assert pending(counted.depth, "depth-first") >= 1
    assert counted.age_s is not None
    await scrape.stop()


async def test_a_slow_count_is_taken_less_often(engine: AsyncEngine):
    """A count that took 10 s is not repeated for 1,000 s (1 % of a core), whatever max_age."""
    counter = QueueDepthStore(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE queue_depth_counted SET took_s = 10"))
    await backdate(engine, 600)
    assert await counter.count_if_stale(0) is False
    assert (await counter.read()).every_s(0) == 1000
    await backdate(engine, 1001)
    assert await counter.count_if_stale(0) is True
    assert (await counter.read()).took_s < 10  # measured again
