"""The periodic count and the scrape's reads use their indexes: no scan of the history.

A large finished history (requests, batches) and a small live part, analyzed as the
autovacuum would: the plans must walk the partial indexes of the live rows only."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.keys import ApiKey
from app.store.fleet_gauges import BATCHES
from app.store.queue_depth import COUNT

HISTORY = 200_000
LIVE_ROWS = 2_000


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    return [plan, *(n for child in plan.get("Plans", []) for n in nodes(child))]


async def plan_of(engine: AsyncEngine, sql: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        raw = (await conn.execute(text(f"EXPLAIN (FORMAT JSON) {sql}"))).scalar_one()
    doc = raw if isinstance(raw, list) else json.loads(raw)
    return nodes(doc[0]["Plan"])


async def test_the_queue_count_and_its_oldest_pending_age_walk_only_the_live_index(
    engine: AsyncEngine, owner: ApiKey
):
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, status,"
                " body, created_at, finished_at)"
                " SELECT 'resp_hist' || g, :owner, '/v1/responses', 'm' || (g % 5), 'flex',"
                " 'completed', '{}'::jsonb, now() - make_interval(secs => g), now()"
                " FROM generate_series(1, :n) g"
            ),
            {"owner": owner.id, "n": HISTORY},
        )
        await conn.execute(
            text(
                "INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, status,"
                " body) SELECT 'resp_live' || g, :owner, '/v1/responses', 'm' || (g % 5),"
                " 'flex', CASE WHEN g % 4 = 0 THEN 'in_progress' ELSE 'pending' END,"
                " '{}'::jsonb FROM generate_series(1, :n) g"
            ),
            {"owner": owner.id, "n": LIVE_ROWS},
        )
        await conn.execute(text("ANALYZE requests"))
    plan = await plan_of(engine, str(COUNT))
    scanned = {n.get("Relation Name"): n["Node Type"] for n in plan if "Relation Name" in n}
    assert "Seq Scan" not in [n["Node Type"] for n in plan], plan
    assert any(n.get("Index Name") == "requests_live_idx" for n in plan), plan
    assert "requests" in scanned


async def test_a_scrape_reads_live_batches_by_their_partial_index(
    engine: AsyncEngine, owner: ApiKey
):
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO batches (id, owner_key_id, kind, endpoint, status,"
                " completion_window, expires_at, total)"
                " SELECT 'batch_hist' || g, :owner, 'file', '/v1/responses', 'completed', '24h',"
                " now(), 10 FROM generate_series(1, 50000) g"
            ),
            {"owner": owner.id},
        )
        await conn.execute(text("ANALYZE batches"))
    plan = await plan_of(engine, str(BATCHES))
    assert "Seq Scan" not in [n["Node Type"] for n in plan], plan
    assert any(n.get("Index Name") == "batches_live_idx" for n in plan), plan
