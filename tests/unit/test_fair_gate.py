"""The fair gate: free slots go to the waiting key with the least service for its weight."""

from __future__ import annotations

import asyncio

import pytest

from worker.fair_gate import FairGate


async def _order(gate: FairGate, waiters: list[tuple[str, float]]) -> list[str]:
    """Queue ``waiters`` behind a held slot, then free it; the keys in the order served."""
    served: list[str] = []

    async def call(key: str, weight: float) -> None:
        async with gate.slot(key, weight):
            served.append(key)
            await asyncio.sleep(0)

    await gate.acquire("holder")
    tasks = [asyncio.create_task(call(k, w)) for k, w in waiters]
    await asyncio.sleep(0)  # all queued
    assert gate.waiting == len(waiters)
    gate.release()
    await asyncio.gather(*tasks)
    return served


async def test_a_key_with_one_call_is_not_queued_behind_another_keys_backlog():
    gate = FairGate(1)
    served = await _order(gate, [("batch", 1.0)] * 50 + [("single", 1.0)])
    assert served.index("single") <= 1  # FIFO would serve it last (index 50)


async def test_two_busy_keys_alternate():
    gate = FairGate(1)
    served = await _order(gate, [("a", 1.0)] * 20 + [("b", 1.0)] * 20)
    first_half = served[:20]
    assert abs(first_half.count("a") - first_half.count("b")) <= 1


async def test_weights_share_slots_in_proportion():
    gate = FairGate(1)
    served = await _order(gate, [("heavy", 3.0)] * 60 + [("light", 1.0)] * 60)
    first = served[:40]
    assert first.count("heavy") == pytest.approx(30, abs=2)


async def test_an_idle_key_banks_no_credit():
    gate = FairGate(1)
    await _order(gate, [("a", 1.0)] * 30)  # a alone: 30 grants
    served = await _order(gate, [("a", 1.0)] * 10 + [("b", 1.0)] * 10)
    assert abs(served[:10].count("a") - served[:10].count("b")) <= 1


async def test_free_slots_are_taken_at_once_and_cancelled_waiters_hand_theirs_on():
    gate = FairGate(2)
    await gate.acquire("a")
    await gate.acquire("b")  # both slots, no waiting
    waiter = asyncio.create_task(gate.acquire("c"))
    other = asyncio.create_task(gate.acquire("d"))
    await asyncio.sleep(0)
    waiter.cancel()
    gate.release()
    await asyncio.wait_for(other, 1)  # c's cancelled place did not swallow the slot
    assert gate.waiting == 0
