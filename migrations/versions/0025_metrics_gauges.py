"""metrics: the oldest pending row per model and tier; live batches by an index

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-09 16:00:00

- ``queue_depth.oldest_at``: the ``created_at`` of the oldest pending row of each model and
  tier, stored by the same periodic count that fills ``queue_depth`` (the same scan of the
  live rows); ``/metrics`` shows its age (``tiergate_queue_oldest_age_seconds``). Nullable:
  NULL on the in-progress rows' counts.
- ``batches_live_idx``: the Batch API's batches not yet final, by status, so ``/metrics``
  reads the live batches (``tiergate_batches``, ``tiergate_batch_lines``) without walking
  the finished ones.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "queue_depth",
        sa.Column(
            "oldest_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="created_at of the oldest pending row (pending counts only)",
        ),
    )
    op.create_index(
        "batches_live_idx",
        "batches",
        ["status"],
        postgresql_where=sa.text(
            "kind = 'file' AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')"
        ),
    )


def downgrade() -> None:
    op.drop_index("batches_live_idx", table_name="batches")
    op.drop_column("queue_depth", "oldest_at")
