"""SQL of rate limits (token buckets leased in slices) and budgets (running spend per period).

A key with ``rpm``/``tpm`` has one row in ``key_buckets``: requests and tokens available,
refilled continuously at the key's rate up to one minute's worth. A gateway leases a slice of
it in one statement (:data:`LEASE`) and spends the slice locally (``app/calls/limits.py``).
The row's values are recomputed from its own columns in the UPDATE, so concurrent leases of
several gateways serialise on the row lock and never grant more than the bucket holds.

A key with a budget has one row per period in ``key_spend``, added to by the statements that
store costs (:func:`add_spend`), so a budget check reads one row, never sums requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.vocabulary import BudgetPeriod


def period_start(keys: str) -> str:
    """SQL: the first day (UTC) of the current budget period of the ``api_keys`` row ``keys``."""
    return (
        f"CASE {keys}.budget_period"
        f" WHEN '{BudgetPeriod.DAY}' THEN (now() AT TIME ZONE 'UTC')::date"
        f" WHEN '{BudgetPeriod.MONTH}' THEN date_trunc('month', now() AT TIME ZONE 'UTC')::date"
        " ELSE DATE '1970-01-01' END"
    )


def add_spend(done: str) -> str:
    """SQL of a data-modifying CTE body: adds the ``cost_usd`` of the rows of ``done`` (which
    has ``owner_key_id`` and ``cost_usd``) to their budgeted keys' current periods. Rows are
    upserted in key order, so statements of several processes cannot deadlock."""
    return f"""INSERT INTO key_spend AS s (key_id, period, period_start, spent_usd)
SELECT d.owner_key_id, k.budget_period, {period_start("k")}, sum(d.cost_usd)
FROM {done} d JOIN api_keys k ON k.id = d.owner_key_id
WHERE d.cost_usd IS NOT NULL AND k.budget_usd IS NOT NULL
GROUP BY 1, 2, 3 ORDER BY 1
ON CONFLICT (key_id, period, period_start)
DO UPDATE SET spent_usd = s.spent_usd + excluded.spent_usd"""


# (Re)computes a key's spend of its current period from its requests: once, when a budget is
# set or its period changes (an admin's command, never on the hot path).
SEED_SPEND = text(
    f"""
INSERT INTO key_spend AS s (key_id, period, period_start, spent_usd)
SELECT k.id, k.budget_period, p.start,
       coalesce((SELECT sum(r.cost_usd) FROM requests r WHERE r.owner_key_id = k.id
                 AND r.finished_at >= (p.start::timestamp AT TIME ZONE 'UTC')), 0)
FROM api_keys k CROSS JOIN LATERAL (SELECT {period_start("k")} AS start) p
WHERE k.id = :key AND k.budget_usd IS NOT NULL
ON CONFLICT (key_id, period, period_start) DO UPDATE SET spent_usd = excluded.spent_usd
"""
)

SPENT = text(
    "SELECT budget_usd, spent_usd, remaining_usd FROM tiergate_budgets WHERE key_id = :key"
)
BUDGETS = text(
    "SELECT key_id, key_name, budget_usd, budget_period, period_start, spent_usd, remaining_usd"
    " FROM tiergate_budgets ORDER BY key_name"
)

_ELAPSED = "greatest(extract(epoch FROM now() - b.updated_at), 0)"
_RPM = "CAST(:rpm AS float8)"
_TPM = "CAST(:tpm AS float8)"


def _grant(requests: str, tokens: str, dim: str) -> str:
    """SQL: what a lease grants of ``dim`` from a bucket holding ``requests`` and ``tokens``:
    nothing unless both needs are met, else at least the need, at most what is there."""
    have = requests if dim == "r" else tokens
    return (
        f"CASE WHEN {requests} >= CAST(:need_r AS float8) AND {tokens} >= CAST(:need_t AS float8)"
        f" THEN greatest(CAST(:need_{dim} AS float8),"
        f" least(CAST(:want_{dim} AS float8), floor({have}))) ELSE 0 END"
    )


def _lease_sql() -> str:
    refilled_r = f"least({_RPM}, b.requests + {_RPM} / 60.0 * {_ELAPSED})"
    refilled_t = f"least({_TPM}, b.tokens + {_TPM} / 60.0 * {_ELAPSED})"
    grant_r, grant_t = _grant(refilled_r, refilled_t, "r"), _grant(refilled_r, refilled_t, "t")
    first_r, first_t = _grant(_RPM, _TPM, "r"), _grant(_RPM, _TPM, "t")
    return f"""
INSERT INTO key_buckets AS b (key_id, requests, tokens, granted_requests, granted_tokens,
                              updated_at)
VALUES (:key, {_RPM} - {first_r}, {_TPM} - {first_t}, {first_r}, {first_t}, now())
ON CONFLICT (key_id) DO UPDATE SET
    granted_requests = {grant_r}, granted_tokens = {grant_t},
    requests = {refilled_r} - {grant_r}, tokens = {refilled_t} - {grant_t}, updated_at = now()
RETURNING granted_requests, granted_tokens, requests, tokens
"""


# One lease: refill the key's bucket for the time since its last lease, then take
# ``want`` (at least ``need``, or nothing) of each. ``rpm``/``tpm``: the key's limits (a huge
# number for a dimension without one). Returns the grant and what the bucket holds after it.
LEASE = text(_lease_sql())


@dataclass(frozen=True)
class Lease:
    """What a lease granted, and what the bucket held after it."""

    requests: float
    tokens: float
    bucket_requests: float
    bucket_tokens: float


@dataclass(frozen=True)
class Spend:
    """A budgeted key's current period."""

    budget_usd: Decimal
    spent_usd: Decimal
    remaining_usd: Decimal


class LimitStore:
    """SQL of ``key_buckets`` and ``key_spend``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def lease(
        self,
        key_id: str,
        *,
        rpm: float,
        tpm: float,
        need: tuple[float, float],
        want: tuple[float, float],
    ) -> Lease:
        params = {
            "key": key_id,
            "rpm": rpm,
            "tpm": tpm,
            "need_r": need[0],
            "need_t": need[1],
            "want_r": want[0],
            "want_t": want[1],
        }
        async with self.engine.connect() as conn:
            row = (await conn.execute(LEASE, params)).one()
        return Lease(*row)

    async def spent(self, key_id: str) -> Spend | None:
        """The key's budget and spend this period (None: the key has no budget)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(SPENT, {"key": key_id})).first()
        return None if row is None else Spend(*row)

    async def budgets(self) -> list[dict[str, object]]:
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(BUDGETS)]
