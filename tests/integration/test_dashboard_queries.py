"""The dashboard's reads are served by indexes: none walks the ``requests`` table."""

from __future__ import annotations

import pytest
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import dashboard, upstream_jobs

STATEMENTS: dict[str, tuple[TextClause, dict[str, object]]] = {
    "requests per minute": (dashboard.REQUESTS_PER_MINUTE, {"minutes": 15}),
    "batch list": (dashboard.BATCH_IDS, {"key_id": None, "status": None, "limit": 50}),
    "batch progress": (dashboard.BATCH_PROGRESS, {"ids": ["batch_x", "batch_y"]}),
    "batch errors": (dashboard.BATCH_ERRORS, {"id": "batch_x"}),
    "find by id or custom_id": (dashboard.FIND_REQUESTS, {"q": "line-7", "limit": 50}),
    "one request": (dashboard.REQUEST, {"id": "resp_x"}),
    "keys with last use": (dashboard.KEYS, {}),
    "session": (dashboard.FIND_SESSION, {"token_hash": "0" * 64}),
    "open provider jobs": (dashboard.OPEN_JOBS, {"limit": 200}),
    "ended provider jobs": (dashboard.ENDED_JOBS, {"offset": 50, "limit": 51}),
}
# The deliveries of one response or batch: by their object's index, never by a scan.
DELIVERY_STATEMENTS: dict[str, tuple[TextClause, dict[str, object]]] = {
    "webhook deliveries of an object": (dashboard.DELIVERIES, {"id": "resp_x", "limit": 200}),
}
# Reads of ``upstream_jobs`` (never pruned: one row per provider job) go through its indexes.
JOB_STATEMENTS: dict[str, tuple[TextClause, dict[str, object]]] = {
    "open provider jobs": STATEMENTS["open provider jobs"],
    "ended provider jobs": STATEMENTS["ended provider jobs"],
    "open jobs per deployment": (upstream_jobs.OPEN_BY_DEPLOYMENT, {}),
}


async def plan_of(engine: AsyncEngine, statement: TextClause, params: dict[str, object]) -> str:
    async with engine.connect() as conn:
        # An empty table would be scanned anyway: forbid scans to see which indexes exist.
        await conn.execute(text("SET enable_seqscan = off"))
        try:
            rows = await conn.execute(text("EXPLAIN " + statement.text), params)
            return "\n".join(row[0] for row in rows)
        finally:
            await conn.execute(text("RESET enable_seqscan"))


@pytest.mark.parametrize("name", sorted(STATEMENTS))
async def test_no_scan_of_requests(engine: AsyncEngine, name: str):
    statement, params = STATEMENTS[name]
    plan = await plan_of(engine, statement, params)
    assert "Seq Scan on requests" not in plan, plan


@pytest.mark.parametrize("name", sorted(JOB_STATEMENTS))
async def test_no_scan_of_upstream_jobs(engine: AsyncEngine, name: str):
    statement, params = JOB_STATEMENTS[name]
    plan = await plan_of(engine, statement, params)
    assert "Seq Scan on upstream_jobs" not in plan, plan


@pytest.mark.parametrize("name", sorted(DELIVERY_STATEMENTS))
async def test_no_scan_of_webhook_deliveries(engine: AsyncEngine, name: str):
    statement, params = DELIVERY_STATEMENTS[name]
    plan = await plan_of(engine, statement, params)
    assert "webhook_deliveries_object_idx" in plan, plan


async def test_an_unindexed_read_is_seen_scanning(engine: AsyncEngine):
    """The check above can fail: a filter no index serves still shows its scan."""
    statement = text("SELECT id FROM requests WHERE body->>'model' = :m")
    assert "Seq Scan on requests" in await plan_of(engine, statement, {"m": "x"})
