"""Group commit batches concurrent callers and isolates a bad item."""

from __future__ import annotations

import asyncio

import pytest

from app.store.group_commit import GroupCommit


async def test_concurrent_items_share_flushes_and_each_caller_waits_for_its_own():
    flushed: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> None:
        flushed.append(items)
        await gate.wait()

    committer = GroupCommit(flush, name="t")
    committer.start()
    try:
        first = asyncio.create_task(committer.submit(0))
        await asyncio.sleep(0)  # the first flush starts with one item and blocks
        rest = [asyncio.create_task(committer.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        assert not first.done() and not any(t.done() for t in rest)
        gate.set()
        await asyncio.gather(first, *rest)
        assert flushed == [[0], [1, 2, 3, 4, 5]]
    finally:
        await committer.stop()


async def test_a_failing_item_does_not_fail_its_neighbours():
    async def flush(items: list[int]) -> None:
        if 3 in items:
            raise ValueError("bad item")

    committer = GroupCommit(flush, name="t")
    committer.start()
    try:
        results = await asyncio.gather(
            *(committer.submit(i) for i in range(6)), return_exceptions=True
        )
        assert [isinstance(r, ValueError) for r in results] == [i == 3 for i in range(6)]
    finally:
        await committer.stop()


async def test_stop_fails_pending_callers():
    never = asyncio.Event()

    async def flush(items: list[int]) -> None:
        await never.wait()

    committer = GroupCommit(flush, name="t")
    committer.start()
    first = asyncio.create_task(committer.submit(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(committer.submit(2))
    await asyncio.sleep(0)
    await committer.stop()
    with pytest.raises(RuntimeError):
        await second
    first.cancel()


async def test_a_failure_no_item_caused_fails_the_batch_without_retrying_singly():
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        calls.append(items)
        raise ConnectionError("database unreachable")

    gate = asyncio.Event()

    async def first_flush_waits(items: list[int]) -> None:
        if not calls:
            calls.append(items)
            await gate.wait()
            return
        await flush(items)

    committer = GroupCommit(
        first_flush_waits,
        name="t",
        item_may_be_at_fault=lambda exc: not isinstance(exc, ConnectionError),
    )
    committer.start()
    try:
        first = asyncio.create_task(committer.submit(0))
        await asyncio.sleep(0)  # the first flush holds the loop; the rest queue up behind it
        rest = [asyncio.create_task(committer.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        gate.set()
        await first
        results = await asyncio.gather(*rest, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        assert calls == [[0], [1, 2, 3, 4, 5]]  # one failed flush, no item retried alone
    finally:
        await committer.stop()


async def test_a_read_flush_gives_each_caller_its_own_result():
    async def flush(items: list[int]) -> list[int]:
        return [item * 10 for item in items]

    reader: GroupCommit[int, int] = GroupCommit(flush, name="read")
    reader.start()
    try:
        assert await asyncio.gather(*(reader.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    finally:
        await reader.stop()
