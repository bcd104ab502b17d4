"""response_events: the stored events of background Responses created with stream=true

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:00:00

One row per event, keyed by the response id and its ``sequence_number``, so a reader resumes
with ``sequence_number > N`` on the primary key. The workers write them in batches (one
statement per flush, not per token). The foreign key with ``ON DELETE CASCADE`` makes the
events go with their request: ``DELETE /v1/responses/{id}`` and the retention sweep need no
statement of their own. A new, empty table: no rewrite of anything that exists.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "response_events",
        sa.Column(
            "response_id",
            sa.Text(),
            sa.ForeignKey("requests.id", ondelete="CASCADE"),
            nullable=False,
            comment="a background Response created with stream=true",
        ),
        sa.Column("sequence_number", sa.Integer(), nullable=False, comment="0-based, consecutive"),
        sa.Column(
            "event",
            JSONB(),
            nullable=False,
            comment="the event as streamed, sequence_number included",
        ),
        sa.PrimaryKeyConstraint("response_id", "sequence_number"),
    )


def downgrade() -> None:
    op.drop_table("response_events")
