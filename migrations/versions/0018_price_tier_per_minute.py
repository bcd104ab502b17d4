"""requests per minute by pricing tier: Batch API lines count as ``batch``, not ``flex``

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 10:00:00

Batch API lines are stored as ``flex`` rows but priced, reported (``tiergate usage``) and
listed (``tiergate batch``) as ``batch``. ``tiergate_requests_per_minute`` gains the column
``price_tier`` (``default``, ``flex`` or ``batch``: the same expression as
``tiergate_usage_by_key.price_tier``) and is grouped by it, so the dashboard's overview says
``batch`` for batch lines too. ``service_tier`` stays as stored; summing by it gives the old
answer. Nothing is rewritten: it is a view.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRICE_TIER = "CASE WHEN batch_id IS NULL THEN service_tier ELSE 'batch' END"
REQUESTS_PER_MINUTE = """
    SELECT date_trunc('minute', finished_at) AS minute, service_tier,
           count(*) AS requests, count(*) FILTER (WHERE status <> 'completed') AS errors{extra}
    FROM requests
    WHERE finished_at IS NOT NULL AND finished_at > now() - interval '1 hour'
    GROUP BY 1, 2{group}
"""


def upgrade() -> None:
    op.execute(
        "CREATE OR REPLACE VIEW tiergate_requests_per_minute AS "
        + REQUESTS_PER_MINUTE.format(extra=f",\n           {PRICE_TIER} AS price_tier", group=", 5")
    )


def downgrade() -> None:
    op.execute("DROP VIEW tiergate_requests_per_minute")
    op.execute(
        "CREATE VIEW tiergate_requests_per_minute AS "
        + REQUESTS_PER_MINUTE.format(extra="", group="")
    )
