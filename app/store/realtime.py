"""Tracking rows of realtime calls: written before the answer reaches the client.

A crash therefore leaves a trace (the sweep fails rows whose gateway stopped, see
``app/store/sweeps.py``). Starts and ends arrive in groups (``group_commit.py``) and each
group is one statement: this is the gateway's hottest write.
"""

from __future__ import annotations

import datetime as dt
import functools
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


def _whole_sql(n: int) -> str:
    """INSERT of realtime rows whose call ended before their start was written: the start's
    7 arrays, the call's start time and the outcome's 13 arrays, as $n..$n+20."""
    return f"""
INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, background, stream,
                      status, attempts, body, created_at, started_at, gateway_id,
                      response_status, response_body, error, input_tokens, output_tokens,
                      total_tokens, cached_tokens, reasoning_tokens, usage_estimated, cost_usd,
                      deployment, cache, finished_at)
SELECT u.id, u.owner, u.endpoint, u.model, '{Tier.DEFAULT}', false, u.stream, u.status, 1,
       CAST(u.body AS jsonb), u.at, u.at, u.gateway, u.response_status,
       CAST(u.response_body AS jsonb), CAST(u.error AS jsonb), u.input_tokens, u.output_tokens,
       u.total_tokens, u.cached_tokens, u.reasoning_tokens, u.usage_estimated, u.cost_usd,
       u.deployment, u.cache, now()
FROM unnest(${n}::text[], ${n + 1}::text[], ${n + 2}::text[], ${n + 3}::text[],
            ${n + 4}::boolean[], ${n + 5}::text[], ${n + 6}::text[], ${n + 7}::timestamptz[],
            ${n + 8}::text[], ${n + 9}::int[], ${n + 10}::text[], ${n + 11}::text[],
            ${n + 12}::int[], ${n + 13}::int[], ${n + 14}::int[], ${n + 15}::int[],
            ${n + 16}::int[], ${n + 17}::boolean[], ${n + 18}::numeric[], ${n + 19}::text[],
            ${n + 20}::text[])
     AS u(id, owner, endpoint, model, stream, body, gateway, at, status, response_status,
          response_body, error, input_tokens, output_tokens, total_tokens, cached_tokens,
          reasoning_tokens, usage_estimated, cost_usd, deployment, cache)
"""


@functools.cache
def _track_sql(starts: bool, ends: bool, wholes: bool) -> str:
    """One statement for starts of new calls, ends of earlier ones and whole rows of calls that
    ended before their start was written. An end always belongs to a row committed by an
    earlier flush (the proxy awaits its start). Ends and whole rows add their cost to their
    budgeted keys' running spend in the same statement."""
    if starts and not (ends or wholes):
        return _start_sql(1)
    ctes: list[str] = []
    done: list[str] = []
    n = 1
    if starts:
        ctes.append(f"started AS ({_start_sql(n)} RETURNING 1)")
        n += 7
    if ends:
        ctes.append(f"ended AS ({_finish_sql(n)} RETURNING r.owner_key_id, r.cost_usd)")
        done.append("SELECT owner_key_id, cost_usd FROM ended")
        n += 14
    if wholes:
        ctes.append(f"whole AS ({_whole_sql(n)} RETURNING owner_key_id, cost_usd)")
        done.append("SELECT owner_key_id, cost_usd FROM whole")
    ctes.append(f"spent AS ({add_spend('(' + ' UNION ALL '.join(done) + ')')} RETURNING 1)")
    names = [cte.split(" ", 1)[0] for cte in ctes]
    return f"WITH {', '.join(ctes)} SELECT " + ", ".join(
        f"(SELECT count(*) FROM {name})" for name in names
    )


@dataclass(frozen=True, kw_only=True)
class RealtimeStart(NewRequest):
    """The tracking row of a realtime call, written before its answer is sent (its tier is
    always ``default``, never background); ``at``: when the call started."""

    gateway_id: str | None = None
    at: dt.datetime


@dataclass(frozen=True)
class RealtimeWhole:
    """A realtime call that ended before its row was written: the row, final at once."""

    start: RealtimeStart
    outcome: Outcome


@dataclass(frozen=True)
class RealtimeEnd:
    """How a realtime call ended (its row exists already)."""

    id: str
    outcome: Outcome


class RealtimeTracker:
    """Writes realtime tracking rows on one held connection (one flush at a time)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.held = HeldConnection(engine)

    async def track(self, items: list[RealtimeStart | RealtimeEnd | RealtimeWhole]) -> None:
        """Record realtime calls starting and ending, all in one statement.

        Called by one group-commit loop per gateway, on its held connection (``db.py``):
        this is the gateway's hottest write.
        """
        starts = [i for i in items if isinstance(i, RealtimeStart)]
        ends = [i for i in items if isinstance(i, RealtimeEnd)]
        wholes = [i for i in items if isinstance(i, RealtimeWhole)]
        if not items:
            return
        args: list[Any] = []
        if starts:
            args += _start_arrays(starts)
        if ends:
            columns = outcome_arrays([e.outcome for e in ends])
            args += [[e.id for e in ends], *columns.values()]
        if wholes:
            args += _start_arrays([w.start for w in wholes])
            args.append([w.start.at for w in wholes])
            args += outcome_arrays([w.outcome for w in wholes]).values()
        sql = _track_sql(bool(starts), bool(ends), bool(wholes))
        await self.held.run(lambda conn: conn.execute(sql, *args))

    async def release(self) -> None:
        """Give back the held connection."""
        await self.held.release()


def _start_arrays(starts: list[RealtimeStart]) -> list[list[Any]]:
    """The 7 arrays of :func:`_start_sql` (and the head of :func:`_whole_sql`)."""
    shared = new_request_arrays(starts)
    return [
        *(shared[k] for k in ("ids", "owners", "endpoints", "models", "streams", "bodies")),
        [r.gateway_id for r in starts],
    ]
