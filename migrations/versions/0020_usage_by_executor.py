"""usage by executor path: ``tiergate_usage_by_key.executor``; ``upstream_jobs`` by age

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 14:00:00

``tiergate_usage_by_key`` gains the column ``executor`` (and is grouped by it): the path each
row ran on, ``direct``, ``flex`` or ``batch`` (``requests.executor``), else ``cache``
(answered from the response cache), ``realtime`` (a realtime call) or ``none`` (a deferred
row that never ran, or finished before 0019): the same expression as
``app.vocabulary.sql_executor_path`` (``tiergate usage --by executor``). Its other columns
stay as they were; summing over ``executor`` gives the old rows. Nothing is rewritten: it is a
view.

``upstream_jobs_created_idx`` serves the dashboard's pages of recent provider jobs, newest
first (the table is never pruned; it holds one row per provider job, not per request).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRICE_TIER = "CASE WHEN r.batch_id IS NULL THEN r.service_tier ELSE 'batch' END"
EXECUTOR = (
    "CASE WHEN r.executor IS NOT NULL THEN r.executor"
    " WHEN r.cache IN ('hit', 'semantic-hit') THEN 'cache'"
    " WHEN r.batch_id IS NULL AND r.service_tier <> 'flex' AND NOT r.background"
    " THEN 'realtime' ELSE 'none' END"
)
USAGE_BY_KEY = f"""
    SELECT k.name AS key_name, r.model, r.service_tier,
           date_trunc('hour', r.created_at) AS hour, count(*) AS requests,
           sum(r.input_tokens) AS input_tokens, sum(r.output_tokens) AS output_tokens,
           sum(r.total_tokens) AS total_tokens,
           sum(r.cached_tokens) AS cached_tokens, sum(r.reasoning_tokens) AS reasoning_tokens,
           sum(r.cost_usd) AS cost_usd,
           count(*) FILTER (WHERE r.usage_estimated) AS estimated_requests,
           {PRICE_TIER} AS price_tier{{extra}}
    FROM requests r JOIN api_keys k ON k.id = r.owner_key_id
    GROUP BY k.name, r.model, r.service_tier, date_trunc('hour', r.created_at),
             {PRICE_TIER}{{group}}
"""


def upgrade() -> None:
    op.execute(
        "CREATE OR REPLACE VIEW tiergate_usage_by_key AS "
        + USAGE_BY_KEY.format(extra=f",\n           {EXECUTOR} AS executor", group=f", {EXECUTOR}")
    )
    op.create_index("upstream_jobs_created_idx", "upstream_jobs", ["created_at"])


def downgrade() -> None:
    op.drop_index("upstream_jobs_created_idx", table_name="upstream_jobs")
    op.execute("DROP VIEW tiergate_usage_by_key")
    op.execute("CREATE VIEW tiergate_usage_by_key AS " + USAGE_BY_KEY.format(extra="", group=""))
