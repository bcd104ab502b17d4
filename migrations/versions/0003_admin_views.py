"""admin views: queue depth, failures by code, per-batch progress, recent usage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    "tiergate_queue_depth": """
        SELECT model, service_tier, status, count(*) AS requests,
               min(created_at) AS oldest_created_at
        FROM requests
        WHERE status IN ('pending', 'in_progress')
        GROUP BY model, service_tier, status
    """,
    "tiergate_failures": """
        SELECT model, service_tier, status, error->>'code' AS error_code, count(*) AS requests,
               max(finished_at) AS last_seen_at
        FROM requests
        WHERE status IN ('failed', 'expired', 'cancelled')
        GROUP BY model, service_tier, status, error->>'code'
    """,
    "tiergate_batch_progress": """
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
               sum(r.total_tokens) AS total_tokens, b.created_at, b.expires_at
        FROM batches b
        LEFT JOIN requests r ON r.batch_id = b.id
        GROUP BY b.id
    """,
    "tiergate_usage_by_key": """
        SELECT k.name AS key_name, r.model, r.service_tier,
               date_trunc('hour', r.created_at) AS hour, count(*) AS requests,
               sum(r.input_tokens) AS input_tokens, sum(r.output_tokens) AS output_tokens,
               sum(r.total_tokens) AS total_tokens
        FROM requests r JOIN api_keys k ON k.id = r.owner_key_id
        GROUP BY k.name, r.model, r.service_tier, date_trunc('hour', r.created_at)
    """,
}


def upgrade() -> None:
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
