"""live key names are unique: a partial unique index on api_keys.name of keys not revoked

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 09:00:00

``tiergate keys revoke NAME`` and ``keys update NAME`` act on every live key with that name,
and usage, budgets and fair shares are reported by name: two live keys named alike were
ambiguous. ``api_keys_live_name_idx`` makes a name unique among live keys (a revoked key's
name may be given again).

Existing duplicates must not make the upgrade fail: the oldest live key of each name keeps
it, and every younger live duplicate is renamed ``<name>-<its id>`` (unique, since ids are).
Nothing else changes: the secrets, limits and history of the renamed keys stay as they were,
so clients keep working; ``tiergate keys list`` shows the new names. The downgrade drops the
index and leaves the names as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAME_DUPLICATES = """
UPDATE api_keys k SET name = k.name || '-' || k.id
FROM (
    SELECT id, row_number() OVER (PARTITION BY name ORDER BY created_at, id) AS n
    FROM api_keys WHERE revoked_at IS NULL
) d
WHERE d.id = k.id AND d.n > 1
"""


def upgrade() -> None:
    op.execute(RENAME_DUPLICATES)
    op.create_index(
        "api_keys_live_name_idx",
        "api_keys",
        ["name"],
        unique=True,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("api_keys_live_name_idx", table_name="api_keys")
