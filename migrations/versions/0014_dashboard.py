"""dashboard: sign-in sessions, requests per minute, lookup by custom_id

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 09:00:00

``dashboard_sessions`` holds the admin dashboard's sign-ins: the cookie carries a random
token, the table only its sha256, so a leaked table row opens nothing. The view
``tiergate_requests_per_minute`` counts the last hour's finished requests by minute and tier,
with those that did not complete (the dashboard's overview reads it; it walks the partial index
on ``finished_at``, so it costs the same whatever the history holds).
``requests_custom_id_idx`` finds a batch line by its ``custom_id`` (built concurrently).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REQUESTS_PER_MINUTE = """
    SELECT date_trunc('minute', finished_at) AS minute, service_tier,
           count(*) AS requests, count(*) FILTER (WHERE status <> 'completed') AS errors
    FROM requests
    WHERE finished_at IS NOT NULL AND finished_at > now() - interval '1 hour'
    GROUP BY 1, 2
"""


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("token_hash", sa.Text(), primary_key=True, comment="sha256 of the cookie"),
        sa.Column(
            "key_id", sa.Text(), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        comment="admin dashboard sign-ins (the cookie holds the token, this table its hash)",
    )
    op.create_index("dashboard_sessions_expires_idx", "dashboard_sessions", ["expires_at"])
    op.execute("CREATE VIEW tiergate_requests_per_minute AS " + REQUESTS_PER_MINUTE)
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS requests_custom_id_idx"
            " ON requests (custom_id) WHERE custom_id IS NOT NULL"
        )


def downgrade() -> None:
    op.drop_index("requests_custom_id_idx", table_name="requests")
    op.execute("DROP VIEW tiergate_requests_per_minute")
    op.drop_index("dashboard_sessions_expires_idx", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
