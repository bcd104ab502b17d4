"""attempt errors: the error of every attempt that was retried, kept on the request

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 10:20:00

``requests.error`` holds the last error only; ``requests.attempt_errors`` keeps one entry per
attempt that failed and went back to the queue (``attempt``, ``at``, ``error``,
``deployment``), so a request's timeline (the dashboard's, or SQL) shows each attempt with
its error. Attempts that made no call (no deployment had room, a key's rate) add nothing.
A nullable column: no table rewrite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = "each retried attempt: [{attempt, at, error, deployment}]"


def upgrade() -> None:
    op.add_column("requests", sa.Column("attempt_errors", JSONB(), nullable=True, comment=COMMENT))


def downgrade() -> None:
    op.drop_column("requests", "attempt_errors")
