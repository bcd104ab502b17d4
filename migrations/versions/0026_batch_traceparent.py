"""batches.traceparent: the trace a Batch API batch belongs to

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 16:30:00

The W3C ``traceparent`` of the gateway's span that created the batch (NULL when tracing is
off): its validate, run and finalize jobs, on whichever worker, continue that trace
(docs/observability.md). Nullable, no default: adding it rewrites nothing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batches",
        sa.Column(
            "traceparent",
            sa.Text(),
            nullable=True,
            comment="W3C traceparent of the creating request's span (tracing on)",
        ),
    )


def downgrade() -> None:
    op.drop_column("batches", "traceparent")
