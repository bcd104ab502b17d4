"""Queue depth for ``/metrics``: the last count in the database, read at each scrape.

Workers count the live queue in their maintenance, one process at a time, at most once per
``max_age_s``, less often when the queue is so large that counting it takes long
(app/store/queue_depth.py); a scrape reads those few rows and never counts, so
scrapes cost the same whatever the queue holds. When no worker has counted for
``STEP_IN_AFTER`` such periods (a gateway running alone), the gateway counts in the
background, through the same guard; the very first scrape waits for that count.

Each scrape also reads the fleet's gauges (live processes, budgets, live batches: a few rows
of small tables, app/store/fleet_gauges.py) in the same time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from app.metrics import FleetView
from app.store.fleet_gauges import FleetGaugeStore
from app.store.queue_depth import Counted, QueueDepthStore

log = logging.getLogger("tiergate.metrics")

# Workers count every max_age_s (plus up to one maintenance period); a gateway steps in after
# this many periods without a count.
STEP_IN_AFTER = 3.0


class QueueDepth:
    """The last count of live rows by model, tier and status, as stored."""

    def __init__(
        self, engine: AsyncEngine, *, max_age_s: float, timeout_s: float, fresh_s: float = 30.0
    ) -> None:
        self.store = QueueDepthStore(engine)
        self.fleet_store = FleetGaugeStore(engine)
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.fresh_s = fresh_s
        self._last = Counted([], None)
        # The last fleet read (None until one succeeds: no "0 workers" before anything is known).
        self.fleet: FleetView | None = None
        self._counting: asyncio.Task[None] | None = None

    async def read(self) -> Counted:
        """The stored count; starts one in the background when nobody counted for a while.
        Refreshes ``fleet`` too."""
        try:
            async with asyncio.timeout(self.timeout_s):
                self._last = await self.store.read()
                self.fleet = await self.fleet_store.read(self.fresh_s)
        except Exception as exc:  # the database is down: /metrics still answers
            log.warning("queue depth not read: %s", exc)
            return self._last
        age = self._last.age_s
        if age is None or age >= STEP_IN_AFTER * self._last.every_s(max(self.max_age_s, 1.0)):
            if self._counting is None or self._counting.done():
                self._counting = asyncio.create_task(self._count(), name="queue-depth")
            if age is None:  # never counted: this first answer waits for the count
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._counting), self.timeout_s)
                with contextlib.suppress(Exception):
                    self._last = await self.store.read()
        return self._last

    async def stop(self) -> None:
        """Cancel a count under way."""
        if self._counting is not None:
            self._counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counting

    async def _count(self) -> None:
        try:
            await self.store.count_if_stale(self.max_age_s)
        except Exception as exc:
            log.warning("queue depth not counted: %s", exc)
