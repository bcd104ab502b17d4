"""The byte budget: first come first served, bounded waits, every byte given back."""

from __future__ import annotations

import asyncio

import pytest

from app.gateway.bodies import SMALL_BODY_BYTES, ByteBudget
from app.openai.errors import APIError


def test_small_bodies_are_free_and_unknown_sizes_cost_the_limit():
    budget = ByteBudget(1000_000, wait_s=1)
    assert budget.cost(SMALL_BODY_BYTES, limit=500_000) == 0
    assert budget.cost(SMALL_BODY_BYTES + 1, limit=500_000) == SMALL_BODY_BYTES + 1
    assert budget.cost(None, limit=500_000) == 500_000
    # A body larger than the whole budget runs alone rather than never.
    assert budget.cost(5_000_000, limit=8_000_000) == 1000_000


async def test_waiters_are_served_in_order_and_release_is_idempotent():
    budget = ByteBudget(100, wait_s=5)
    first = await budget.take(80)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        hold = await budget.take(size)
        order.append(name)
        await asyncio.sleep(0)
        hold.release()

    # "big" is first in line; "tiny" would fit now but must not overtake it.
    big = asyncio.create_task(take("big", 90))
    await asyncio.sleep(0)
    tiny = asyncio.create_task(take("tiny", 10))
    await asyncio.sleep(0)
    assert budget.waiting == 2 and order == []
    first.release()
    first.release()
    await asyncio.gather(big, tiny)
    assert order == ["big", "tiny"]
    assert budget.available == 100 and budget.waiting == 0


async def test_a_wait_past_wait_s_is_a_503_and_leaves_no_trace():
    budget = ByteBudget(100, wait_s=0.05)
    held = await budget.take(60)
    with pytest.raises(APIError) as busy:
        await budget.take(50)
    assert busy.value.status == 503 and busy.value.code == "server_busy"
    assert busy.value.headers == {"retry-after": "1"}
    assert budget.waiting == 0 and budget.in_use == 60
    held.release()
    assert budget.in_use == 0


async def test_a_cancelled_waiter_lets_the_next_one_through():
    budget = ByteBudget(100, wait_s=5)
    held = await budget.take(70)
    blocked = asyncio.create_task(budget.take(90))
    await asyncio.sleep(0)
    behind = asyncio.create_task(budget.take(30))
    await asyncio.sleep(0)
    assert not behind.done()
    blocked.cancel()
    hold = await asyncio.wait_for(behind, 1)
    assert budget.in_use == 100
    hold.release()
    held.release()
    assert budget.available == 100 and budget.waiting == 0


async def test_a_grant_that_races_a_cancellation_is_given_back():
    budget = ByteBudget(100, wait_s=5)
    held = await budget.take(100)
    waiter = asyncio.create_task(budget.take(40))
    await asyncio.sleep(0)
    held.release()  # grants the waiter's bytes before it runs again
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.available == 100
