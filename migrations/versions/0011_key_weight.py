"""key weight: a key's share of the flex tier's slots relative to other keys

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:10:00

Workers share each model's slots between the keys with calls waiting, in weighted fair order
(worker/fair_gate.py); ``api_keys.weight`` (default 1) is a key's share. A constant default:
no table rewrite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = "share of each model's flex and batch slots against other keys' (default 1)"


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column(
            "weight", sa.Float(), nullable=False, server_default=sa.text("1"), comment=COMMENT
        ),
    )
    op.create_check_constraint("api_keys_weight_positive", "api_keys", "weight > 0")


def downgrade() -> None:
    op.drop_constraint("api_keys_weight_positive", "api_keys", type_="check")
    op.drop_column("api_keys", "weight")
