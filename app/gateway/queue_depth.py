"""Queue depth for ``/metrics``, counted at most once per ``max_age_s`` while it is scraped.

Counting the live rows is a scan of the live partial index: a few milliseconds with a small
queue, about 0.1 s with a million requests queued. A scrape therefore gets the last count
(at most ``max_age_s`` plus one count old) and, when that is stale, starts the next count in
the background; nothing is counted while nobody scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.requests import queue_depth

log = logging.getLogger("tiergate.metrics")

Depth = list[tuple[str, str, str, int]]


class QueueDepth:
    """The last count of live rows by model, tier and status."""

    def __init__(self, engine: AsyncEngine, *, max_age_s: float, timeout_s: float) -> None:
        self.engine = engine
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._depth: Depth | None = None
        self._at = 0.0
        self._counting: asyncio.Task[None] | None = None

    async def read(self) -> Depth:
        """The last count; the first read waits for one (an empty list if it fails)."""
        stale = self._depth is None or time.monotonic() - self._at >= self.max_age_s
        if stale and (self._counting is None or self._counting.done()):
            self._counting = asyncio.create_task(self._count(), name="queue-depth")
        if self._depth is None and self._counting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._counting), self.timeout_s)
        return self._depth or []

    async def stop(self) -> None:
        """Cancel a count under way."""
        if self._counting is not None:
            self._counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counting

    async def _count(self) -> None:
        try:
            self._depth = await queue_depth(self.engine)
            self._at = time.monotonic()
        except Exception as exc:  # the database is down: /metrics still answers
            log.warning("queue depth not counted: %s", exc)
