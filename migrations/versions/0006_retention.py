"""retention: history is deleted oldest first

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:40:00

Indexes on ``created_at`` let the retention pass find the oldest finished requests and
batches without scanning the tables.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("requests_created_idx", "requests", ["created_at"])
    op.create_index("batches_created_idx", "batches", ["created_at"])


def downgrade() -> None:
    op.drop_index("batches_created_idx", table_name="batches")
    op.drop_index("requests_created_idx", table_name="requests")
