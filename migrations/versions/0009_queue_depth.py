"""queue depth: /metrics reads the last count instead of counting the live queue

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:30:00

Counting a queue of a million live rows takes a tenth of a second of PostgreSQL's CPU; every
gateway counted it on its own whenever it was scraped, and the count competed with the
scrapes themselves. Now one process at a time (a worker's maintenance, or a gateway when no
worker has counted for a while) counts into ``queue_depth`` at most every
``limits.metrics_max_age_s`` (and no more often than 100 times the last count's duration),
guarded by the single row of ``queue_depth_counted``; scrapes read those few rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queue_depth",
        sa.Column("model", sa.Text(), primary_key=True),
        sa.Column("service_tier", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        comment="live requests by model, tier and status, as last counted",
    )
    op.create_table(
        "queue_depth_counted",
        sa.Column("one", sa.Boolean(), primary_key=True, server_default=sa.text("true")),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=True, comment="NULL: never"),
        sa.Column(
            "took_s",
            sa.Float(),
            nullable=False,
            server_default=sa.text("0"),
            comment="last count's time",
        ),
        sa.CheckConstraint("one", name="queue_depth_counted_one_row"),
        comment="when queue_depth was last counted (one row)",
    )
    op.execute("INSERT INTO queue_depth_counted (counted_at) VALUES (NULL)")


def downgrade() -> None:
    op.drop_table("queue_depth_counted")
    op.drop_table("queue_depth")
