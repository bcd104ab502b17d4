"""Reports by executor path: ``tiergate usage --by executor`` and the view
``tiergate_usage_by_key`` sum the same rows; the open provider jobs per deployment
(``tiergate deployments``) and the dashboard's pages of jobs."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli.usage import table
from app.keys import ApiKey
from app.store.dashboard import DashboardStore
from app.store.upstream_jobs import OpenJobs, UpstreamJobStore
from app.store.usage import summary
from tests.integration.conftest import insert_file_batch

INSERT = text(
    """
INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, background, status,
                      body, batch_id, executor, cache, input_tokens, output_tokens,
                      total_tokens, cost_usd, finished_at)
VALUES (:id, :owner, '/v1/responses', 'm', :tier, :background, :status, '{}', :batch,
        :executor, :cache, CAST(:input AS int), CAST(:output AS int),
        CAST(:input AS int) + CAST(:output AS int), :cost, now())
"""
)
# id, executor, cache, a batch line, service_tier, background, status, input, output, cost
ROWS = [
    ("d1", "direct", None, False, "flex", False, "completed", 10, 1, "0.001"),
    ("d2", "direct", "miss", False, "default", True, "completed", 20, 2, "0.002"),
    ("f1", "flex", None, False, "flex", False, "completed", 30, 3, "0.003"),
    ("b1", "batch", None, True, "flex", False, "completed", 40, 4, "0.004"),
    ("b2", "batch", None, False, "flex", False, "completed", 50, 5, "0.005"),
    ("b3", "batch", None, True, "flex", False, "failed", 0, 0, None),
    ("r1", None, "miss", False, "default", False, "completed", 60, 6, "0.006"),
    ("c1", None, "hit", False, "flex", False, "completed", 70, 7, "0.007"),
    ("c2", None, "semantic-hit", False, "default", False, "completed", 5, 1, None),
    ("x1", None, None, False, "flex", False, "expired", None, None, None),
]


async def insert_rows(engine: AsyncEngine, owner: ApiKey) -> None:
    batch = await insert_file_batch(engine, owner, "in_progress")
    async with engine.begin() as conn:
        for id, executor, cache, line, tier, background, status, given, out, cost in ROWS:
            await conn.execute(
                INSERT,
                {
                    "id": f"{owner.id}-{id}",
                    "owner": owner.id,
                    "tier": tier,
                    "background": background,
                    "status": status,
                    "batch": batch if line else None,
                    "executor": executor,
                    "cache": cache,
                    "input": given,
                    "output": out,
                    "cost": None if cost is None else Decimal(cost),
                },
            )


async def test_usage_groups_by_the_path_each_row_ran_on(engine: AsyncEngine, owner: ApiKey):
    await insert_rows(engine, owner)
    rows = await summary(engine, by="executor", key=owner.name)
    got = {r.group: (r.requests, r.input_tokens, r.output_tokens, r.cost_usd, r.unpriced)
           for r in rows}  # fmt: skip
    # Completed rows only: direct (a flex row and a background one), the provider's flex
    # tier, its Batch API (a Batch API line and a blocking flex call), a realtime call, and
    # answers from the response cache (one of them unpriced).
    assert got == {
        "direct": (2, 30, 3, Decimal("0.003"), 0),
        "flex": (1, 30, 3, Decimal("0.003"), 0),
        "batch": (2, 90, 9, Decimal("0.009"), 0),
        "realtime": (1, 60, 6, Decimal("0.006"), 0),
        "cache": (2, 75, 8, Decimal("0.007"), 1),
    }
    shown = table(rows, "executor").splitlines()
    assert shown[0].split()[:2] == ["EXECUTOR", "REQUESTS"]
    assert shown[-2].split()[:2] == ["TOTAL", "8"] and "+?" in shown[-2]
    # The view sums every row, finished or not, by the same expression.
    async with engine.connect() as conn:
        view = await conn.execute(
            text(
                "SELECT executor, sum(requests)::int, sum(input_tokens)::int, sum(cost_usd)"
                " FROM tiergate_usage_by_key WHERE key_name = :name GROUP BY 1"
            ),
            {"name": owner.name},
        )
        in_view = {row[0]: tuple(row[1:]) for row in view}
        # Summed over executor, the view's rows are its old ones (per tier: unchanged).
        tiers = await conn.execute(
            text(
                "SELECT price_tier, sum(requests)::int FROM tiergate_usage_by_key"
                " WHERE key_name = :name GROUP BY 1"
            ),
            {"name": owner.name},
        )
        by_tier = dict(tiers.all())
    assert in_view == {
        "direct": (2, 30, Decimal("0.003")),
        "flex": (1, 30, Decimal("0.003")),
        "batch": (3, 90, Decimal("0.009")),  # the failed line too
        "realtime": (1, 60, Decimal("0.006")),
        "cache": (2, 75, Decimal("0.007")),
        "none": (1, None, None),  # expired before it ran
    }
    assert by_tier == {"default": 3, "flex": 5, "batch": 2}


INSERT_JOB = text(
    """
INSERT INTO upstream_jobs (id, model, deployment, api, endpoint, status, rows, counts,
                           created_at, submitted_at, ended_at, upstream_batch_id)
VALUES (:id, :model, :deployment, 'openai', '/v1/responses', :status, :rows,
        CAST(:counts AS jsonb), now() - make_interval(secs => :age_s),
        CASE WHEN CAST(:status AS text) <> 'submitting'
             THEN now() - make_interval(secs => :running_s) END,
        CASE WHEN CAST(:status AS text) = 'ended' THEN now() END, 'batch_' || CAST(:id AS text))
"""
)
# id, model, deployment, status, rows, seconds since created, seconds since submitted
JOBS = [
    ("uj1", "m", "a", "submitting", 5, 1, 0),
    ("uj2", "m", "a", "running", 100, 200, 120),
    ("uj3", "m", "a", "running", 50, 30, 10),
    ("uj4", "m", "a", "ended", 70, 400, 390),
    ("uj5", "m", "b", "ended", 10, 300, 290),
    ("uj6", "n", "c", "running", 1, 60, 50),
]


async def test_open_jobs_per_deployment_and_the_pages_of_jobs(engine: AsyncEngine):
    async with engine.begin() as conn:
        for id, model, deployment, status, rows, age_s, running_s in JOBS:
            await conn.execute(
                INSERT_JOB,
                {
                    "id": id,
                    "model": model,
                    "deployment": deployment,
                    "status": status,
                    "rows": rows,
                    "counts": f'{{"completed": {rows}}}' if status == "ended" else None,
                    "age_s": float(age_s),
                    "running_s": float(running_s),
                },
            )
    found = await UpstreamJobStore(engine).open_by_deployment()
    assert [(j.model, j.deployment, j.submitting, j.running, j.rows) for j in found] == [
        ("m", "a", 1, 2, 155),
        ("n", "c", 0, 1, 1),
    ]  # b has only ended jobs: not listed
    ages = {j.deployment: j.oldest_running_s for j in found}
    assert isinstance(found[0], OpenJobs)
    assert ages["a"] is not None and 119 <= ages["a"] < 150  # since its submission
    assert ages["c"] is not None and 49 <= ages["c"] < 80
    store = DashboardStore(engine)
    assert [j["id"] for j in await store.open_jobs()] == ["uj1", "uj3", "uj6", "uj2"]
    assert [j["id"] for j in await store.ended_jobs(0, 1)] == ["uj5"]
    (older,) = await store.ended_jobs(1, 1)
    assert older["id"] == "uj4" and older["counts"] == {"completed": 70}
    assert round(older["age_s"]) == 400
    assert await store.ended_jobs(2, 1) == []
