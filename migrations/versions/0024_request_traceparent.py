"""requests.traceparent: the trace a deferred request belongs to

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-09 10:00:00

The W3C ``traceparent`` of the gateway's span that accepted a flex or background request
(NULL when tracing is off): the worker that runs it, whichever and after any restart,
continues that trace (docs/observability.md). Nullable, no default: adding it rewrites nothing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column(
            "traceparent",
            sa.Text(),
            nullable=True,
            comment="W3C traceparent of the accepting span (tracing on)",
        ),
    )


def downgrade() -> None:
    op.drop_column("requests", "traceparent")
