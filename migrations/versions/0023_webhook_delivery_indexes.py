"""webhook deliveries: indexes for retention and for the dashboard

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-08 16:00:00

- ``webhook_deliveries_finished_created_idx``: retention deletes the oldest finished
  deliveries first (``limits.retention.webhook_deliveries_days``). Partial, over finished rows
  only, so a pass never walks past pending ones (those of a disabled endpoint may wait for
  weeks), and a delivery gets its entry once, when it is delivered or given up.
- ``webhook_deliveries_object_idx``: the dashboard's request and batch pages read the
  deliveries of one response or batch.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "webhook_deliveries_finished_created_idx",
        "webhook_deliveries",
        ["created_at"],
        postgresql_where=sa.text("status IN ('delivered', 'failed')"),
    )
    op.create_index("webhook_deliveries_object_idx", "webhook_deliveries", ["object_id"])


def downgrade() -> None:
    op.drop_index("webhook_deliveries_object_idx", table_name="webhook_deliveries")
    op.drop_index("webhook_deliveries_finished_created_idx", table_name="webhook_deliveries")
