"""The key cache: a burst of requests with an uncached key makes one lookup."""

from __future__ import annotations

import asyncio

import pytest

from app.gateway.middleware.auth import KeyCache
from app.keys import ApiKey


async def started(keys: SlowKeys) -> None:
    """Let the event loop run until the store is being asked (a bounded number of turns)."""
    for _ in range(100):
        if keys.calls:
            return
        await asyncio.sleep(0)
    raise AssertionError("no lookup started")


class SlowKeys:
    """A key store whose lookups wait until released, counting calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.fail = fail

    async def find(self, secret: str) -> ApiKey | None:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise ConnectionError("database down")
        return ApiKey(id="key_1", name="k", models=None) if secret == "good" else None


async def test_concurrent_misses_share_one_lookup() -> None:
    keys = SlowKeys()
    cache = KeyCache(keys)  # type: ignore[arg-type]
    waiting = [asyncio.create_task(cache.authenticate("good")) for _ in range(500)]
    unknown = [asyncio.create_task(cache.authenticate("bad")) for _ in range(10)]
    await started(keys)
    keys.release.set()
    assert {key.id for key in await asyncio.gather(*waiting) if key} == {"key_1"}
    assert await asyncio.gather(*unknown) == [None] * 10
    assert keys.calls == 2  # one per distinct secret
    assert (await cache.authenticate("good")) is not None and keys.calls == 2  # cached


async def test_a_leaving_client_does_not_cancel_the_shared_lookup() -> None:
    keys = SlowKeys()
    cache = KeyCache(keys)  # type: ignore[arg-type]
    first = asyncio.create_task(cache.authenticate("good"))
    second = asyncio.create_task(cache.authenticate("good"))
    await started(keys)
    first.cancel()
    keys.release.set()
    assert (await second) is not None
    assert keys.calls == 1


async def test_a_failed_lookup_fails_its_waiters_and_is_tried_again_later() -> None:
    keys = SlowKeys(fail=True)
    cache = KeyCache(keys)  # type: ignore[arg-type]
    waiting = [asyncio.create_task(cache.authenticate("good")) for _ in range(3)]
    await started(keys)
    keys.release.set()
    for task in waiting:
        with pytest.raises(ConnectionError):
            await task
    keys.fail = False
    assert (await cache.authenticate("good")) is not None
    assert keys.calls == 2
