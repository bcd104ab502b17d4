"""A model's call slots in one worker process, shared fairly between API keys.

A FIFO semaphore serves calls in arrival order: a key that claims a 20,000-line batch queues
hundreds of calls at once, and another key's single flex call waits behind all of them. The
gate instead gives each slot that frees to the waiting key that has had the least service for
its weight (start-time fair queuing over grants): each grant advances the key's tag by
``1 / weight``; the waiting key with the smallest tag goes next, and a key that was idle starts
at the current virtual time, so idling banks no credit. A lone key gets every slot at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class FairGate:
    """``slots`` calls at once; free slots go to waiting keys in weighted fair order."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        # Per key, its waiting calls in order: (granted, start tag, finish tag).
        self._waiting: dict[str, deque[tuple[asyncio.Future[None], float, float]]] = {}
        self._last: dict[str, float] = {}  # each key's latest finish tag
        self._now = 0.0  # virtual time: the start tag of the last grant

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, key: str, weight: float = 1.0) -> AsyncIterator[None]:
        """Hold one slot for ``key`` for the duration of the block."""
        await self.acquire(key, weight)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, key: str, weight: float = 1.0) -> None:
        """Wait for a slot, in ``key``'s fair turn."""
        start, finish = self._tag(key, weight)
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self._now = max(self._now, start)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append((granted, start, finish))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as the waiter was cancelled: hand the slot on
            else:
                self._forget(key, granted)
            raise

    def release(self) -> None:
        """Give a slot back; the waiting call with the smallest finish tag gets it."""
        self._free += 1
        while self._free > 0 and self._waiting:
            key = min(self._waiting, key=lambda k: self._waiting[k][0][2])
            queue = self._waiting[key]
            granted, start, _ = queue.popleft()
            if not queue:
                del self._waiting[key]
            if granted.done():  # cancelled while waiting
                continue
            self._free -= 1
            self._now = max(self._now, start)
            granted.set_result(None)

    def _tag(self, key: str, weight: float) -> tuple[float, float]:
        """A new call's tags: it starts when the key's last call finishes, or now if later."""
        start = max(self._now, self._last.get(key, self._now))
        finish = start + 1.0 / weight
        self._last[key] = finish
        if len(self._last) > 2 * len(self._waiting) + 64:
            # Keys whose last tag is behind virtual time would start there anyway.
            live = self._waiting
            self._last = {k: t for k, t in self._last.items() if t > self._now or k in live}
        return start, finish

    def _forget(self, key: str, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            return
        for i, (each, _, _) in enumerate(queue):
            if each is granted:
                del queue[i]
                break
        if not queue:
            del self._waiting[key]
