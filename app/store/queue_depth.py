"""The queue depth /metrics shows: counted by one process at a time, read by every scrape.

A count is taken at most every ``max_age_s``, and never more often than every
``COUNT_COST_RATIO`` times the last count's duration, so counting a large live queue costs at
most 1 % of a core of PostgreSQL (a million queued rows take about 0.15 s to count: one count
every 15 s), whoever scrapes.

``count_if_stale`` takes the single row of ``queue_depth_counted`` with a guarded UPDATE: of
the processes that try at once, one moves ``counted_at`` and counts; the others' UPDATE waits
for its commit, sees the fresh time and does nothing. The count is a scan of the partial index
on live statuses, so it grows with the live queue (about 0.1 s per million rows), never with
the finished history. The same scan keeps the ``created_at`` of the oldest pending row of
each model and tier (``oldest_at``): the read gives its age as of the read, so a queue held
back keeps ageing between counts (a row that ran since the count keeps its age until the
next one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.vocabulary import LIVE, SQL_PRICE_TIER, Status, sql_in

COUNT_COST_RATIO = 100.0

CLAIM_COUNT = text(
    "UPDATE queue_depth_counted SET counted_at = now() WHERE counted_at IS NULL"
    " OR counted_at < now() - make_interval(secs => greatest(:max_age_s, took_s * :ratio))"
    " RETURNING counted_at"
)
TOOK = text("UPDATE queue_depth_counted SET took_s = extract(epoch FROM clock_timestamp() - now())")
CLEAR = text("DELETE FROM queue_depth")
# By pricing tier: Batch API lines (stored as ``flex`` rows) are counted as ``batch``, the
# word ``tiergate batch``, ``tiergate usage`` and the dashboard use.
COUNT = text(
    "INSERT INTO queue_depth (model, service_tier, status, requests, oldest_at)"
    f" SELECT model, {SQL_PRICE_TIER}, status, count(*),"
    f" min(created_at) FILTER (WHERE status = '{Status.PENDING}') FROM requests"
    f" WHERE status IN {sql_in(LIVE)} GROUP BY 1, 2, 3"
)
READ = text(
    "SELECT extract(epoch FROM now() - c.counted_at)::float8 AS age_s, c.took_s,"
    " d.model, d.service_tier, d.status, d.requests,"
    " extract(epoch FROM now() - d.oldest_at)::float8 AS oldest_s"
    " FROM queue_depth_counted c LEFT JOIN queue_depth d ON true"
)

Depth = list[tuple[str, str, str, int]]
# (model, tier, seconds): the age of the oldest pending row of each model and tier.
Oldest = list[tuple[str, str, float]]


@dataclass(frozen=True)
class Counted:
    """The last count, its age in seconds (``None``: never counted), how long it took, and the
    age of the oldest pending row per model and tier."""

    depth: Depth
    age_s: float | None
    took_s: float = 0.0
    oldest: Oldest = field(default_factory=list)

    def every_s(self, max_age_s: float) -> float:
        """How often counts are taken, given the last one's cost."""
        return max(max_age_s, self.took_s * COUNT_COST_RATIO)


class QueueDepthStore:
    """Counts the live queue into ``queue_depth``; reads the last count."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def count_if_stale(self, max_age_s: float) -> bool:
        """Count unless another process did within ``max_age_s``; True if this one counted."""
        async with self.engine.begin() as conn:
            claim = {"max_age_s": max_age_s, "ratio": COUNT_COST_RATIO}
            if (await conn.execute(CLAIM_COUNT, claim)).first() is None:
                return False
            await conn.execute(CLEAR)
            await conn.execute(COUNT)
            await conn.execute(TOOK)
            return True

    async def read(self) -> Counted:
        """The last count (one short read of a few rows)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(READ)).all()
        if not rows:
            return Counted([], None)
        depth = [(r.model, r.service_tier, r.status, r.requests) for r in rows if r.model]
        oldest = [
            (r.model, r.service_tier, max(r.oldest_s, 0.0)) for r in rows if r.oldest_s is not None
        ]
        return Counted(depth, rows[0].age_s, rows[0].took_s, oldest)
