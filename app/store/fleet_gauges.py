"""The fleet's state for ``/metrics``, read at each scrape from small tables.

Live processes by kind (``processes``, one row per gateway or worker), each budgeted key's
spend this period (``tiergate_budgets``: one row per budgeted key, never a sum of requests)
and the Batch API's live batches (the partial index ``batches_live_idx``): a few rows each,
whatever the history holds, so a scrape costs the same on a large database.
"""

from __future__ import annotations

from sqlalchemy import Float, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.metrics import FleetView
from app.vocabulary import LIVE_BATCH, BatchKind, sql_in

PROCESSES = text(
    "SELECT kind, count(*) AS n FROM processes"
    " WHERE last_seen_at > now() - make_interval(secs => :fresh_s) GROUP BY kind"
).bindparams(bindparam("fresh_s", type_=Float))
BUDGETS = text(
    "SELECT key_name, budget_period, budget_usd::float8 AS budget, spent_usd::float8 AS spent"
    " FROM tiergate_budgets"
)
BATCHES = text(
    "SELECT status, count(*) AS n, coalesce(sum(total), 0) AS lines FROM batches"
    f" WHERE kind = '{BatchKind.FILE}' AND status IN {sql_in(LIVE_BATCH)} GROUP BY status"
)


class FleetGaugeStore:
    """Reads the fleet's gauges in one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def read(self, fresh_s: float) -> FleetView:
        """Processes seen in the last ``fresh_s`` seconds, budgets, live batches."""
        async with self.engine.connect() as conn:
            processes = (await conn.execute(PROCESSES, {"fresh_s": fresh_s})).all()
            budgets = (await conn.execute(BUDGETS)).all()
            batches = (await conn.execute(BATCHES)).all()
        return FleetView(
            processes={r.kind: r.n for r in processes},
            budgets=[(r.key_name, r.budget_period, r.budget, r.spent) for r in budgets],
            batches=[(r.status, r.n, int(r.lines)) for r in batches],
        )
