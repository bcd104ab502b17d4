"""Tracking rows of realtime calls: written before the answer reaches the client.

A crash therefore leaves a trace (the sweep fails rows whose gateway stopped, see
``app/store/sweeps.py``). Starts and ends arrive in groups (``group_commit.py``) and each
group is one statement: this is the gateway's hottest write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.db import HeldConnection
from app.store.limits import add_spend
from app.store.new_requests import NewRequest, new_request_arrays
from app.store.outcomes import SET_USAGE, Outcome, outcome_arrays
from app.vocabulary import Status, Tier


def _start_sql(n: int) -> str:
    """INSERT of realtime tracking rows, its 7 arrays as $n..$n+6 (asyncpg placeholders)."""
    return f"""
INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, background, stream,
                      status, attempts, body, started_at, gateway_id)
SELECT u.id, u.owner, u.endpoint, u.model, '{Tier.DEFAULT}', false, u.stream,
       '{Status.IN_PROGRESS}', 1, CAST(u.body AS jsonb), now(), u.gateway
FROM unnest(${n}::text[], ${n + 1}::text[], ${n + 2}::text[], ${n + 3}::text[],
            ${n + 4}::boolean[], ${n + 5}::text[], ${n + 6}::text[])
     AS u(id, owner, endpoint, model, stream, body, gateway)
"""


def _finish_sql(n: int) -> str:
    """UPDATE of realtime rows that ended, its 14 arrays as $n..$n+13 (asyncpg placeholders)."""
    return f"""
UPDATE requests AS r
SET status = u.status, response_status = u.response_status,
    response_body = CAST(u.response_body AS jsonb), error = CAST(u.error AS jsonb),
    {SET_USAGE}, deployment = u.deployment, cache = u.cache, finished_at = now()
FROM unnest(${n}::text[], ${n + 1}::text[], ${n + 2}::int[], ${n + 3}::text[], ${n + 4}::text[],
            ${n + 5}::int[], ${n + 6}::int[], ${n + 7}::int[], ${n + 8}::int[], ${n + 9}::int[],
            ${n + 10}::boolean[], ${n + 11}::numeric[], ${n + 12}::text[], ${n + 13}::text[])
     AS u(id, status, response_status, response_body, error, input_tokens, output_tokens,
          total_tokens, cached_tokens, reasoning_tokens, usage_estimated, cost_usd, deployment,
          cache)
WHERE r.id = u.id AND r.status = '{Status.IN_PROGRESS}'
"""


# Starts of new calls and ends of earlier ones, in one statement (one round trip per flush).
# An end always belongs to a row committed by an earlier flush: the proxy awaits its start.
# Ends add their cost to their budgeted keys' running spend in the same statement.
TRACK = {
    (True, False): _start_sql(1),
    (False, True): (
        f"WITH ended AS ({_finish_sql(1)} RETURNING r.owner_key_id, r.cost_usd),"
        f" spent AS ({add_spend('ended')} RETURNING 1)"
        " SELECT (SELECT count(*) FROM ended), (SELECT count(*) FROM spent)"
    ),
    (True, True): (
        f"WITH started AS ({_start_sql(1)} RETURNING 1),"
        f" ended AS ({_finish_sql(8)} RETURNING r.owner_key_id, r.cost_usd),"
        f" spent AS ({add_spend('ended')} RETURNING 1)"
        " SELECT (SELECT count(*) FROM started), (SELECT count(*) FROM ended),"
        " (SELECT count(*) FROM spent)"
    ),
}


@dataclass(frozen=True, kw_only=True)
class RealtimeStart(NewRequest):
    """The tracking row of a realtime call, written before its answer is sent (its tier is
    always ``default``, never background)."""

    gateway_id: str | None = None


@dataclass(frozen=True)
class RealtimeEnd:
    """How a realtime call ended (its row exists already)."""

    id: str
    outcome: Outcome


class RealtimeTracker:
    """Writes realtime tracking rows on one held connection (one flush at a time)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.held = HeldConnection(engine)

    async def track(self, items: list[RealtimeStart | RealtimeEnd]) -> None:
        """Record realtime calls starting and ending, all in one statement.

        Called by one group-commit loop per gateway, on its held connection (``db.py``):
        this is the gateway's hottest write.
        """
        starts = [i for i in items if isinstance(i, RealtimeStart)]
        ends = [i for i in items if isinstance(i, RealtimeEnd)]
        if not items:
            return
        args: list[Any] = []
        if starts:
            shared = new_request_arrays(starts)
            args += [
                *(shared[k] for k in ("ids", "owners", "endpoints", "models", "streams", "bodies")),
                [r.gateway_id for r in starts],
            ]
        if ends:
            columns = outcome_arrays([e.outcome for e in ends])
            args += [[e.id for e in ends], *columns.values()]
        await self.held.run(lambda conn: conn.execute(TRACK[bool(starts), bool(ends)], *args))

    async def release(self) -> None:
        """Give back the held connection."""
        await self.held.release()
