"""Group commit: many concurrent callers, one statement per batch.

Each caller awaits its own item's commit, so durability is per request, while the database
sees one round trip for everything that arrived during the previous flush. Under light load
a batch is a single item and nothing waits; under heavy load batches grow by themselves.
Reads batch the same way: ``flush`` then returns one result per item, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("tiergate.store")


class GroupCommit(Generic[T, R]):
    """Feeds items to ``flush(items)`` in batches of at most ``max_batch``; each caller gets
    its item's result (``flush`` returns them in order, or None when there are none)."""

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R] | None]],
        *,
        name: str,
        max_batch: int = 500,
        item_may_be_at_fault: Callable[[Exception], bool] = lambda _: True,
    ) -> None:
        """``item_may_be_at_fault(exc)`` false (e.g. the database is unreachable) fails the
        whole batch at once instead of retrying its items one by one, which would hold every
        later caller behind as many failing round trips (or pool timeouts) as the batch had
        items."""
        self._flush = flush
        self._name = name
        self._max_batch = max_batch
        self._item_may_be_at_fault = item_may_be_at_fault
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"group-commit-{self._name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._queue:
            if not future.done():
                future.set_exception(RuntimeError("shutting down"))

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future resolves once it is committed (or fails with the flush)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wake.set()
        return future

    async def submit(self, item: T) -> R:
        """Return once ``item`` is committed (with its result); raise what its flush raised."""
        return await self.enqueue(item)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or not self._item_may_be_at_fault(exc):
                for _, future in batch:
                    _settle(future, error=exc)
                return
            # One bad item must not fail its neighbours: retry them one by one.
            log.warning("%s: batch of %d failed (%s); retrying singly", self._name, len(batch), exc)
            for entry in batch:
                await self._commit([entry])
            return
        for index, (_, future) in enumerate(batch):
            _settle(future, None if results is None else results[index])


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: Exception | None = None
) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
