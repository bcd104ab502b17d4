"""/metrics' gauges of the queue's age and of the fleet, on a real database."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.gateway.queue_depth import QueueDepth
from app.keys import ApiKey
from app.metrics import Metrics
from app.store.fleet_gauges import FleetGaugeStore
from app.store.queue_depth import QueueDepthStore
from app.store.requests import RequestStore
from tests.integration.conftest import insert_file_batch
from tests.integration.test_queue_depth import backdate
from tests.integration.test_request_store import submission


async def backdate_request(engine: AsyncEngine, rid: str, seconds: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE requests SET created_at = now() - make_interval(secs => :s) WHERE id = :id"
            ),
            {"s": seconds, "id": rid},
        )


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of ``name{labels}`` in Prometheus text, None if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in exposition.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        head, _, rest = series.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if head == name and got == wanted:
            return float(value)
    return None


async def test_the_oldest_pending_row_is_aged_per_model_and_tier_and_running_rows_are_not(
    engine: AsyncEngine, store: RequestStore, owner: ApiKey
):
    running = submission(owner, model="age-model")
    await store.submit(running)
    await backdate_request(engine, running.id, 600)
    (claimed,) = await store.claim({"age-model": 1}, "wk_age")  # the oldest: now in_progress
    assert claimed.id == running.id
    waiting = submission(owner, model="age-model")
    await store.submit(waiting)
    await backdate_request(engine, waiting.id, 120)
    await store.submit(submission(owner, model="age-model"))  # younger: not the oldest

    depth = QueueDepthStore(engine)
    await backdate(engine, 3600)
    assert await depth.count_if_stale(0)
    counted = await depth.read()
    ages = {(m, t): s for m, t, s in counted.oldest if m == "age-model"}
    assert set(ages) == {("age-model", "flex")}
    assert 120 <= ages["age-model", "flex"] < 180  # the pending one, not the 600 s running one

    metrics = Metrics()
    text_ = metrics.render(counted.depth, counted.age_s, 0, counted.oldest).decode()
    shown = sample(text_, "tiergate_queue_oldest_age_seconds", model="age-model", tier="flex")
    assert shown == ages["age-model", "flex"]

    # It ages between counts: read again later without counting, the age has grown.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE queue_depth SET oldest_at = oldest_at - interval '60 seconds'"
                " WHERE model = 'age-model'"
            )
        )
    again = {(m, t): s for m, t, s in (await depth.read()).oldest if m == "age-model"}
    assert again["age-model", "flex"] >= ages["age-model", "flex"] + 60

    # Once nothing is pending, the next count shows no age for that model.
    await store.claim({"age-model": 5}, "wk_age")
    await backdate(engine, 3600)
    assert await depth.count_if_stale(0)
    assert not [o for o in (await depth.read()).oldest if o[0] == "age-model"]


async def test_the_fleet_gauges_read_live_processes_budgets_and_live_batches(
    engine: AsyncEngine, owner: ApiKey
):
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM processes"))
        await conn.execute(
            text(
                "INSERT INTO processes (id, kind, hostname, pid, last_seen_at) VALUES"
                " ('wk_fresh', 'worker', 'h', 1, now()),"
                " ('wk_stale', 'worker', 'h', 2, now() - interval '5 minutes'),"
                " ('gw_fresh', 'gateway', 'h', 3, now())"
            )
        )
        await conn.execute(
            text("UPDATE api_keys SET budget_usd = 10, budget_period = 'month' WHERE id = :id"),
            {"id": owner.id},
        )
        await conn.execute(
            text(
                "INSERT INTO key_spend (key_id, period, period_start, spent_usd)"
                " VALUES (:id, 'month', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 9.5)"
            ),
            {"id": owner.id},
        )
    running = await insert_file_batch(engine, owner, "in_progress")
    await insert_file_batch(engine, owner, "completed")  # final: not shown
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE batches SET total = 40 WHERE id = :id"), {"id": running})

    fleet = await FleetGaugeStore(engine).read(fresh_s=30)
    assert fleet.processes == {"worker": 1, "gateway": 1}
    assert (owner.name, "month", 10.0, 9.5) in fleet.budgets
    live = {status: (n, lines) for status, n, lines in fleet.batches}
    assert live.get("in_progress", (0, 0))[0] >= 1 and live["in_progress"][1] >= 40
    assert "completed" not in live

    exposition = Metrics().render([], None, 0, (), fleet).decode()
    assert sample(exposition, "tiergate_processes", kind="worker") == 1
    assert sample(exposition, "tiergate_processes", kind="gateway") == 1
    assert sample(exposition, "tiergate_key_budget_usd", key=owner.name, period="month") == 10
    spent = sample(exposition, "tiergate_key_budget_spent_usd", key=owner.name, period="month")
    assert spent == 9.5
    assert sample(exposition, "tiergate_batches", status="in_progress") == live["in_progress"][0]
    assert sample(exposition, "tiergate_batches", status="validating") == 0  # shown at zero

    # A scrape reads both through the gateway's reader; no worker alive shows 0, not nothing.
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM processes WHERE kind = 'worker'"))
    scrape = QueueDepth(engine, max_age_s=60, timeout_s=10, fresh_s=30)
    await scrape.read()
    assert scrape.fleet is not None and scrape.fleet.processes.get("worker", 0) == 0
    exposition = Metrics().render([], None, 0, (), scrape.fleet).decode()
    assert sample(exposition, "tiergate_processes", kind="worker") == 0
    await scrape.stop()


async def test_nothing_read_of_the_fleet_shows_no_process_count():
    """Before a fleet read succeeds, no zero is invented (it would say "workers gone")."""
    exposition = Metrics().render([], None, 0).decode()
    assert sample(exposition, "tiergate_processes", kind="worker") is None
