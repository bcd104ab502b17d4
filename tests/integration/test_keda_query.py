"""The query KEDA's postgresql scaler runs (deploy/kubernetes/keda.yaml), on a real database.

It must return the work that needs workers (queued requests of every tier, flex and Batch API
work in progress; not realtime calls, not finished rows), from the stored ``queue_depth``
count while a worker keeps it fresh, and from the live rows when nobody does. The module has
its database to itself (the ``database`` fixture is per module), so the numbers are exact.
"""

from __future__ import annotations

import psycopg
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.keys import ApiKey
from app.store.dburl import DatabaseURL
from app.store.queue_depth import QueueDepthStore
from app.store.requests import RequestStore
from app.vocabulary import Priority
from tests.integration.conftest import insert_file_batch
from tests.integration.test_request_store import submission
from tests.support.paths import ROOT


def keda_query() -> str:
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "keda.yaml").read_text())
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    return str(trigger["metadata"]["query"])


def run_as_keda(database: DatabaseURL) -> int:
    """One value from a plain libpq connection, as the scaler reads it (a single row, one
    column, scanned as a number)."""
    with psycopg.connect(database.libpq(), autocommit=True) as conn:
        rows = conn.execute(keda_query()).fetchall()
    assert len(rows) == 1 and len(rows[0]) == 1
    value = rows[0][0]
    assert isinstance(value, int)
    return value


async def set_rows(engine: AsyncEngine, sql: str, ids: list[str], **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql + " WHERE id = ANY(:ids)"), {"ids": ids, **params})


async def backdate_count(engine: AsyncEngine, seconds: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE queue_depth_counted SET counted_at = now() - make_interval(secs => :s)"),
            {"s": seconds},
        )


@pytest.fixture
async def queue(engine: AsyncEngine, store: RequestStore, owner: ApiKey) -> int:
    """Rows of every kind; returns how many of them need a worker."""
    flex = [submission(owner, model="keda-a") for _ in range(3)]
    background = [submission(owner, model="keda-b", priority=Priority.BACKGROUND) for _ in range(2)]
    assert {s.tier for s in background} == {"default"}
    others = [submission(owner, model="keda-c") for _ in range(7)]
    await store.submit_many(flex + background + others)
    # One flex request claimed by a worker: in progress, counted.
    (claimed,) = await store.claim({"keda-a": 1}, "wk_keda")
    assert claimed.id in {s.id for s in flex}
    # Batch API lines: two queued and one running are counted.
    batch = await insert_file_batch(engine, owner, "in_progress")
    lines = [s.id for s in others[:3]]
    await set_rows(
        engine,
        "UPDATE requests SET batch_id = :batch, custom_id = id, line_no = 0",
        lines,
        batch=batch,
    )
    await set_rows(engine, "UPDATE requests SET status = 'in_progress'", lines[2:])
    # A realtime call in progress (default tier, not queued): a gateway's work, not counted.
    await set_rows(
        engine,
        "UPDATE requests SET status = 'in_progress', service_tier = 'default', background = false",
        [others[3].id],
    )
    # Finished rows of every kind: never counted, however many.
    await set_rows(
        engine,
        "UPDATE requests SET status = 'completed', finished_at = now()",
        [s.id for s in others[4:]],
    )
    return 3 + 2 + 3  # flex (one of them running), background, batch lines (one running)


async def test_the_query_counts_live_rows_when_no_worker_has_counted(
    engine: AsyncEngine, database: DatabaseURL, queue: int
):
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE queue_depth_counted SET counted_at = NULL"))
    assert run_as_keda(database) == queue
    await backdate_count(engine, 3600)  # a count an hour old is not trusted either
    assert run_as_keda(database) == queue


async def test_the_query_reads_the_stored_count_while_it_is_fresh(
    engine: AsyncEngine, database: DatabaseURL, store: RequestStore, owner: ApiKey
):
    await backdate_count(engine, 3600)
    live = run_as_keda(database)
    assert live > 0
    assert await QueueDepthStore(engine).count_if_stale(10)  # a worker's maintenance
    assert run_as_keda(database) == live
    await store.submit_many([submission(owner, model="keda-d") for _ in range(5)])
    # The stored count (a few rows) answers until the next count ...
    assert run_as_keda(database) == live
    await backdate_count(engine, 3600)  # the next maintenance run, later
    assert await QueueDepthStore(engine).count_if_stale(10)
    assert run_as_keda(database) == live + 5
    # ... and a stale one (no worker counting for a minute) is replaced by a live count.
    await store.submit_many([submission(owner, model="keda-d") for _ in range(2)])
    await backdate_count(engine, 120)
    assert run_as_keda(database) == live + 7


def plan(database: DatabaseURL, *settings: str) -> dict[str, str]:
    """EXPLAIN ANALYZE of the query: each branch's part of the plan, by the table it reads."""
    with psycopg.connect(database.libpq(), autocommit=True) as conn:
        for setting in settings:
            conn.execute(setting)
        rows = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + keda_query()).fetchall()
    text_ = "\n".join(r[0] for r in rows)
    parts = text_.split("InitPlan")[1:]
    return {
        "queue_depth": next(p for p in parts if "on queue_depth d" in p),
        "requests": next(p for p in parts if "on requests r" in p),
    }


async def test_each_branch_reads_only_what_it_needs(engine: AsyncEngine, database: DatabaseURL):
    """Fresh: the live rows are not read at all. Stale: only the partial index of live rows
    is (index-only), so millions of finished rows cost nothing."""
    await backdate_count(engine, 3600)
    assert await QueueDepthStore(engine).count_if_stale(10)
    fresh = plan(database)
    assert "never executed" not in fresh["queue_depth"]
    assert "Aggregate (never executed)" in fresh["requests"]
    await backdate_count(engine, 3600)
    # This test database is tiny, so the planner would rather scan the table; with a large
    # history it takes the partial index, which must therefore fit the query's conditions.
    stale = plan(database, "SET enable_seqscan = off", "SET enable_bitmapscan = off")
    assert "Aggregate (never executed)" in stale["queue_depth"]
    assert "Index Only Scan using requests_live_idx on requests r" in stale["requests"]
    assert "never executed" not in stale["requests"]
