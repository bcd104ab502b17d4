"""/metrics' queue depth: counted once per max_age, in the background once it is stale."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from app.gateway.queue_depth import QueueDepth
from app.store.keys import ApiKey
from app.store.requests import RequestStore
from tests.integration.test_request_store import submission


def pending(depth: list[tuple[str, str, str, int]], model: str) -> int:
    return sum(n for m, _tier, status, n in depth if m == model and status == "pending")


async def test_a_fresh_count_is_reused_and_a_stale_one_renewed_behind_the_scrape(
    engine: AsyncEngine, store: RequestStore, owner: ApiKey
):
    await store.submit(submission(owner, model="depth-model"))
    fresh = QueueDepth(engine, max_age_s=3600, timeout_s=10)
    assert pending(await fresh.read(), "depth-model") == 1  # the first read waits for a count
    await store.submit(submission(owner, model="depth-model"))
    assert pending(await fresh.read(), "depth-model") == 1  # still fresh: no query

    stale = QueueDepth(engine, max_age_s=0, timeout_s=10)
    assert pending(await stale.read(), "depth-model") == 2
    await store.submit(submission(owner, model="depth-model"))
    assert pending(await stale.read(), "depth-model") == 2  # the last count, at once ...
    assert stale._counting is not None
    await stale._counting  # ... while the next one runs
    assert pending(await stale.read(), "depth-model") == 3
    await stale.stop()
    await fresh.stop()
