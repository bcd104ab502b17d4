"""usage: cached and reasoning tokens, estimated usage, cost; batch totals; admin keys

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 08:30:00

``requests`` gains ``cached_tokens`` (part of the input), ``reasoning_tokens`` (part of the
output), ``usage_estimated`` (tiergate counted the tokens: the upstream reported none) and
``cost_usd`` (exact NUMERIC; NULL when unknown: no usage, or no price configured). A Batch
API batch keeps running totals of its lines' usage and cost (``batches.*_tokens``,
``batches.cost_usd``), added as each chunk of results is stored, so reading a Batch never
sums its lines. ``api_keys.is_admin`` marks keys that may read the organization usage and
costs endpoints. Every new column is nullable or has a constant default: no table rewrite.
``requests_finished_at_idx`` serves usage reports bucketed by finish time (built
concurrently: writes go on meanwhile).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOKEN_COLUMNS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
                 "total_tokens")  # fmt: skip

BATCH_PROGRESS = """
    SELECT b.id AS batch_id, b.kind, b.owner_key_id, b.endpoint, b.status AS batch_status,
           b.total,
           count(r.id) FILTER (WHERE r.status = 'pending') AS pending,
           count(r.id) FILTER (WHERE r.status = 'in_progress') AS in_progress,
           count(r.id) FILTER (WHERE r.status = 'completed') AS completed,
           count(r.id) FILTER (WHERE r.status IN ('failed', 'expired', 'cancelled'))
               AS failed,
           min(r.finished_at) AS first_finished_at, max(r.finished_at) AS last_finished_at,
           round(count(r.finished_at) / greatest(extract(epoch FROM
               max(r.finished_at) - min(r.started_at)), 0.001)::numeric, 1)
               AS finished_per_second,
           sum(r.total_tokens) AS total_tokens, b.created_at, b.expires_at{extra}
    FROM batches b
    LEFT JOIN requests r ON r.batch_id = b.id
    WHERE b.kind = 'file'
    GROUP BY b.id
"""
BATCH_EXTRA = """,
           b.input_tokens, b.cached_tokens, b.output_tokens, b.reasoning_tokens,
           b.cost_usd"""

USAGE_BY_KEY = """
    SELECT k.name AS key_name, r.model, r.service_tier,
           date_trunc('hour', r.created_at) AS hour, count(*) AS requests,
           sum(r.input_tokens) AS input_tokens, sum(r.output_tokens) AS output_tokens,
           sum(r.total_tokens) AS total_tokens{extra}
    FROM requests r JOIN api_keys k ON k.id = r.owner_key_id
    GROUP BY k.name, r.model, r.service_tier, date_trunc('hour', r.created_at){group}
"""
USAGE_EXTRA = """,
           sum(r.cached_tokens) AS cached_tokens, sum(r.reasoning_tokens) AS reasoning_tokens,
           sum(r.cost_usd) AS cost_usd,
           count(*) FILTER (WHERE r.usage_estimated) AS estimated_requests,
           CASE WHEN r.batch_id IS NULL THEN r.service_tier ELSE 'batch' END AS price_tier"""
USAGE_GROUP = ", CASE WHEN r.batch_id IS NULL THEN r.service_tier ELSE 'batch' END"


def upgrade() -> None:
    for name, comment in (
        ("cached_tokens", "input tokens read from the provider's prompt cache"),
        ("reasoning_tokens", "output tokens spent on reasoning"),
    ):
        op.add_column("requests", sa.Column(name, sa.Integer(), nullable=True, comment=comment))
    op.add_column(
        "requests",
        sa.Column(
            "usage_estimated",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="tiergate counted the tokens (the upstream reported none)",
        ),
    )
    op.add_column(
        "requests",
        sa.Column(
            "cost_usd",
            sa.Numeric(),
            nullable=True,
            comment="USD, exact; NULL when unknown (no usage or no price configured)",
        ),
    )
    for name in TOKEN_COLUMNS:
        op.add_column(
            "batches",
            sa.Column(name, sa.BigInteger(), nullable=True, comment="sum over the lines"),
        )
    op.add_column(
        "batches",
        sa.Column("cost_usd", sa.Numeric(), nullable=True, comment="sum over the priced lines"),
    )
    op.add_column(
        "api_keys",
        sa.Column(
            "is_admin",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="may read every key's usage and costs",
        ),
    )
    # Batches that ran before this version: their totals, once (later ones keep them live).
    op.execute(
        """
        UPDATE batches b SET input_tokens = s.input_tokens, output_tokens = s.output_tokens,
            total_tokens = s.total_tokens
        FROM (SELECT batch_id, sum(input_tokens) AS input_tokens,
                     sum(output_tokens) AS output_tokens, sum(total_tokens) AS total_tokens
              FROM requests WHERE batch_id IS NOT NULL AND total_tokens IS NOT NULL
              GROUP BY batch_id) s
        WHERE b.id = s.batch_id
        """
    )
    op.execute(
        "CREATE OR REPLACE VIEW tiergate_batch_progress AS "
        + BATCH_PROGRESS.format(extra=BATCH_EXTRA)
    )
    op.execute(
        "CREATE OR REPLACE VIEW tiergate_usage_by_key AS "
        + USAGE_BY_KEY.format(extra=USAGE_EXTRA, group=USAGE_GROUP)
    )
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS requests_finished_at_idx"
            " ON requests (finished_at) WHERE finished_at IS NOT NULL"
        )


def downgrade() -> None:
    op.drop_index("requests_finished_at_idx", table_name="requests")
    op.execute("DROP VIEW tiergate_usage_by_key")
    op.execute("CREATE VIEW tiergate_usage_by_key AS " + USAGE_BY_KEY.format(extra="", group=""))
    op.execute("DROP VIEW tiergate_batch_progress")
    op.execute("CREATE VIEW tiergate_batch_progress AS " + BATCH_PROGRESS.format(extra=""))
    op.drop_column("api_keys", "is_admin")
    for name in (*TOKEN_COLUMNS, "cost_usd"):
        op.drop_column("batches", name)
    for name in ("cost_usd", "usage_estimated", "reasoning_tokens", "cached_tokens"):
        op.drop_column("requests", name)
