"""limits: requests and tokens per minute per key (token buckets), USD budgets per period

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 09:00:00

``api_keys`` gains ``rpm``, ``tpm`` (NULL: no limit), ``budget_usd`` and ``budget_period``
(``day``, ``month`` or ``total``; calendar periods in UTC). ``key_buckets`` holds one token
bucket per limited key (requests and tokens available, refilled continuously at the key's
rate): gateways lease slices of it in one statement. ``key_spend`` keeps a running total of
what a budgeted key spent per period, added by the statements that store costs, so a budget
check never sums requests. ``tiergate_budgets`` shows each budgeted key's spent and remaining
of its current period.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept in step with app/store/limits.py (PERIOD_START): the start of a key's current period.
BUDGETS = """
    SELECT k.id AS key_id, k.name AS key_name, k.budget_usd, k.budget_period, p.period_start,
           coalesce(s.spent_usd, 0) AS spent_usd,
           greatest(k.budget_usd - coalesce(s.spent_usd, 0), 0) AS remaining_usd
    FROM api_keys k
    CROSS JOIN LATERAL (SELECT CASE k.budget_period
        WHEN 'day' THEN (now() AT TIME ZONE 'UTC')::date
        WHEN 'month' THEN date_trunc('month', now() AT TIME ZONE 'UTC')::date
        ELSE DATE '1970-01-01' END AS period_start) p
    LEFT JOIN key_spend s ON s.key_id = k.id AND s.period = k.budget_period
                         AND s.period_start = p.period_start
    WHERE k.budget_usd IS NOT NULL AND k.revoked_at IS NULL
"""


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("rpm", sa.Integer(), nullable=True, comment="requests per minute; NULL: none"),
    )
    op.add_column(
        "api_keys",
        sa.Column("tpm", sa.BigInteger(), nullable=True, comment="tokens per minute; NULL: none"),
    )
    op.add_column(
        "api_keys",
        sa.Column("budget_usd", sa.Numeric(), nullable=True, comment="USD per budget_period"),
    )
    op.add_column(
        "api_keys",
        sa.Column("budget_period", sa.Text(), nullable=True, comment="day, month or total (UTC)"),
    )
    op.create_check_constraint("api_keys_rpm_positive", "api_keys", "rpm > 0")
    op.create_check_constraint("api_keys_tpm_positive", "api_keys", "tpm > 0")
    op.create_check_constraint(
        "api_keys_budget_valid",
        "api_keys",
        "(budget_usd IS NULL) = (budget_period IS NULL) AND budget_usd >= 0"
        " AND budget_period IN ('day', 'month', 'total')",
    )
    op.create_table(
        "key_buckets",
        sa.Column("key_id", sa.Text(), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("requests", sa.Float(), nullable=False, comment="requests available"),
        sa.Column("tokens", sa.Float(), nullable=False, comment="tokens available"),
        sa.Column("granted_requests", sa.Float(), nullable=False, server_default="0"),
        sa.Column("granted_tokens", sa.Float(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "key_spend",
        sa.Column("key_id", sa.Text(), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("period", sa.Text(), primary_key=True),
        sa.Column("period_start", sa.Date(), primary_key=True),
        sa.Column("spent_usd", sa.Numeric(), nullable=False),
    )
    op.execute("CREATE VIEW tiergate_budgets AS " + BUDGETS)


def downgrade() -> None:
    op.execute("DROP VIEW tiergate_budgets")
    op.drop_table("key_spend")
    op.drop_table("key_buckets")
    op.drop_constraint("api_keys_budget_valid", "api_keys")
    op.drop_constraint("api_keys_tpm_positive", "api_keys")
    op.drop_constraint("api_keys_rpm_positive", "api_keys")
    for name in ("budget_period", "budget_usd", "tpm", "rpm"):
        op.drop_column("api_keys", name)
