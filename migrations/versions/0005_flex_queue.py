"""flex queue: single requests are claimed from the table, not run as one job each

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 17:00:00

- ``requests.priority`` (higher is claimed first) and ``requests.claimed_by`` (the worker
  process running the attempt), with the partial indexes that the claim, the retry timer
  and the expiry sweep use.
- ``gateways`` becomes ``processes``: gateways and workers both keep a presence row there, so a
  dead worker's claimed requests can be told from a live one's.
- ``tiergate_batch_progress`` shows Batch API batches only.
- Live single requests deferred by an earlier version lose their procrastinate job (it is
  deleted if it has not started) and go back to ``pending``: the workers' claim takes them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


BATCH_PROGRESS = """
    SELECT b.id AS batch_id, b.kind, b.owner_key_id, b.endpoint, b.status AS batch_status,
           b.total,
           count(r.id) FILTER (WHERE r.status = 'pending') AS pending,
           count(r.id) FILTER (WHERE r.status = 'in_progress') AS in_progress,
           count(r.id) FILTER (WHERE r.status = 'completed') AS completed,
           count(r.id) FILTER (WHERE r.status IN ('failed', 'expired', 'cancelled'))
               AS failed,
           min(r.finished_at) AS first_finished_at, max(r.finished_at) AS last_finished_at,
           round(count(r.finished_at) / greatest(extract(epoch FROM
               max(r.finished_at) - min(r.started_at)), 0.001)::numeric, 1)
               AS finished_per_second,
           sum(r.total_tokens) AS total_tokens, b.created_at, b.expires_at
    FROM batches b
    LEFT JOIN requests r ON r.batch_id = b.id
    {where}
    GROUP BY b.id
"""


def upgrade() -> None:
    op.rename_table("gateways", "processes")
    op.add_column(
        "processes",
        sa.Column(
            "kind",
            sa.Text(),
            server_default="gateway",
            nullable=False,
            comment="'gateway' or 'worker'",
        ),
    )
    op.alter_column(
        "processes",
        "id",
        existing_type=sa.Text(),
        comment="one row per running gateway or worker process",
        existing_comment="one row per running gateway process",
    )
    op.execute("ALTER INDEX IF EXISTS gateways_pkey RENAME TO processes_pkey")
    op.add_column(
        "requests",
        sa.Column(
            "priority",
            sa.SmallInteger(),
            server_default="0",
            nullable=False,
            comment="deferred requests: higher is claimed first",
        ),
    )
    op.add_column(
        "requests",
        sa.Column(
            "claimed_by",
            sa.Text(),
            nullable=True,
            comment="the worker process running a deferred request's attempt",
        ),
    )
    op.create_index(
        "requests_deferred_ready_idx",
        "requests",
        ["model", sa.text("priority DESC"), "created_at"],
        postgresql_where=sa.text("status = 'pending' AND custom_id IS NULL AND not_before IS NULL"),
    )
    op.create_index(
        "requests_deferred_later_idx",
        "requests",
        ["not_before"],
        postgresql_where=sa.text(
            "status = 'pending' AND custom_id IS NULL AND not_before IS NOT NULL"
        ),
    )
    op.create_index(
        "requests_deferred_expiry_idx",
        "requests",
        ["expires_at"],
        postgresql_where=sa.text("status = 'pending' AND custom_id IS NULL"),
    )
    op.execute(
        """
        WITH live AS (
            UPDATE requests SET status = 'pending', job_id = NULL, not_before = NULL,
                priority = CASE WHEN service_tier = 'flex' THEN 0 ELSE 100 END
            WHERE custom_id IS NULL AND job_id IS NOT NULL
              AND status IN ('pending', 'in_progress')
            RETURNING job_id
        )
        DELETE FROM procrastinate_jobs
        WHERE id IN (SELECT job_id FROM live) AND status = 'todo'
        """
    )
    # Only Batch API batches: the single-request batches of earlier versions are history.
    op.execute(
        "CREATE OR REPLACE VIEW tiergate_batch_progress AS "
        + BATCH_PROGRESS.format(where="WHERE b.kind = 'file'")
    )


def downgrade() -> None:
    op.execute(
        "CREATE OR REPLACE VIEW tiergate_batch_progress AS " + BATCH_PROGRESS.format(where="")
    )
    op.drop_index("requests_deferred_expiry_idx", table_name="requests")
    op.drop_index("requests_deferred_later_idx", table_name="requests")
    op.drop_index("requests_deferred_ready_idx", table_name="requests")
    op.drop_column("requests", "claimed_by")
    op.drop_column("requests", "priority")
    op.execute("ALTER INDEX IF EXISTS processes_pkey RENAME TO gateways_pkey")
    op.drop_column("processes", "kind")
    op.rename_table("processes", "gateways")
