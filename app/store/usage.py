"""Usage and cost reports over finished requests (``tiergate usage``, the organization
endpoints). Rows are chosen by ``finished_at`` (served by ``requests_finished_at_idx``), so a
report reads only its time range however many rows pile up outside it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.vocabulary import SQL_PRICE_TIER, Status, sql_executor_path

By = Literal["model", "tier", "day", "key", "executor"]

# What each report grouping is, in SQL over ``requests r`` joined to ``api_keys k``.
GROUPS: dict[str, str] = {
    "model": "r.model",
    "tier": SQL_PRICE_TIER.replace("batch_id", "r.batch_id").replace(
        "service_tier", "r.service_tier"
    ),
    "day": "to_char(date_trunc('day', r.finished_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')",
    "key": "k.name",
    # The path each row ran on (direct, flex, batch; cache, realtime, none: see vocabulary).
    "executor": sql_executor_path("r."),
}

SUMS = """count(*) AS requests,
       coalesce(sum(r.input_tokens), 0) AS input_tokens,
       coalesce(sum(r.cached_tokens), 0) AS cached_tokens,
       coalesce(sum(r.output_tokens), 0) AS output_tokens,
       coalesce(sum(r.reasoning_tokens), 0) AS reasoning_tokens,
       sum(r.cost_usd) AS cost_usd,
       count(*) FILTER (WHERE r.usage_estimated) AS estimated,
       count(*) FILTER (WHERE r.total_tokens IS NOT NULL AND r.cost_usd IS NULL) AS unpriced"""


@dataclass(frozen=True)
class UsageRow:
    """One line of a usage report."""

    group: str
    requests: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal | None
    estimated: int
    unpriced: int


async def summary(
    engine: AsyncEngine,
    *,
    by: By,
    key: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[UsageRow]:
    """Completed requests finished in [since, until), grouped ``by``, for one key name or all."""
    group = GROUPS[by]
    query = text(
        f"""
SELECT {group} AS grp, {SUMS}
FROM requests r JOIN api_keys k ON k.id = r.owner_key_id
WHERE r.status = '{Status.COMPLETED}' AND r.finished_at IS NOT NULL
  AND (CAST(:since AS timestamptz) IS NULL OR r.finished_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR r.finished_at < :until)
  AND (CAST(:key AS text) IS NULL OR k.name = :key)
GROUP BY grp ORDER BY grp
"""
    )
    params = {"since": since, "until": until, "key": key}
    async with engine.connect() as conn:
        rows = (await conn.execute(query, params)).mappings().all()
    return [
        UsageRow(
            group=str(row["grp"]),
            requests=row["requests"],
            input_tokens=int(row["input_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            output_tokens=int(row["output_tokens"]),
            reasoning_tokens=int(row["reasoning_tokens"]),
            cost_usd=row["cost_usd"],
            estimated=row["estimated"],
            unpriced=row["unpriced"],
        )
        for row in rows
    ]


# Organization report groupings (OpenAI's ``group_by`` names) -> SQL.
ORG_GROUPS: dict[str, str] = {
    "model": "r.model",
    "api_key_id": "r.owner_key_id",
    "batch": "(r.batch_id IS NOT NULL)",
    "project_id": "CAST(NULL AS text)",  # tiergate has no projects: one group, null
    "line_item": "r.model || ', ' || " + GROUPS["tier"],
}


@dataclass(frozen=True)
class BucketRow:
    """The sums of one group of requests in one time bucket."""

    start: dt.datetime
    groups: dict[str, object]
    requests: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_usd: Decimal | None


async def buckets(
    engine: AsyncEngine,
    *,
    endpoints: list[str],
    start: dt.datetime,
    end: dt.datetime,
    width_s: int,
    group_by: list[str],
    models: list[str] | None = None,
    key_ids: list[str] | None = None,
    priced_only: bool = False,
) -> list[BucketRow]:
    """Completed requests to ``endpoints`` finished in [start, end), summed per bucket of
    ``width_s`` seconds (aligned on the Unix epoch) and per ``group_by`` values."""
    picked = [f"{ORG_GROUPS[g]} AS g_{g}" for g in group_by]
    names = ["bucket", *(f"g_{g}" for g in group_by)]
    query = text(
        f"""
SELECT date_bin(make_interval(secs => :width), r.finished_at, TIMESTAMPTZ 'epoch') AS bucket,
       {"".join(p + ", " for p in picked)}{SUMS}
FROM requests r
WHERE r.status = '{Status.COMPLETED}' AND r.finished_at >= :start AND r.finished_at < :end
  AND r.endpoint = ANY(CAST(:endpoints AS text[]))
  AND (CAST(:models AS text[]) IS NULL OR r.model = ANY(CAST(:models AS text[])))
  AND (CAST(:keys AS text[]) IS NULL OR r.owner_key_id = ANY(CAST(:keys AS text[])))
  {"AND r.cost_usd IS NOT NULL" if priced_only else ""}
GROUP BY {", ".join(names)} ORDER BY {", ".join(names)}
"""
    )
    params = {
        "width": float(width_s),
        "start": start,
        "end": end,
        "endpoints": endpoints,
        "models": models,
        "keys": key_ids,
    }
    async with engine.connect() as conn:
        rows = (await conn.execute(query, params)).mappings().all()
    return [
        BucketRow(
            start=row["bucket"],
            groups={g: row[f"g_{g}"] for g in group_by},
            requests=row["requests"],
            input_tokens=int(row["input_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cost_usd=row["cost_usd"],
        )
        for row in rows
    ]
