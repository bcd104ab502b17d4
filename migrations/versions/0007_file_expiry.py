"""file expiry: files uploaded with expires_after are deleted once it has passed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 10:00:00

``files.expires_at`` existed from the start but was never set; uploads now set it from
``expires_after``. Every worker's sweep looks for files whose time has passed: this index
holds only files that expire, so that look costs nothing while none do, however many files
are kept for ever.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


COMMENT = "from expires_after at upload; the workers delete the file once it passed"


def upgrade() -> None:
    op.alter_column(
        "files", "expires_at", existing_type=sa.DateTime(timezone=True), comment=COMMENT
    )
    op.create_index(
        "files_expires_idx",
        "files",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("files_expires_idx", table_name="files")
    op.alter_column(
        "files",
        "expires_at",
        existing_type=sa.DateTime(timezone=True),
        comment=None,
        existing_comment=COMMENT,
    )
