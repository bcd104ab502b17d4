"""executors: the path each deferred row ran on, and providers' Batch API jobs

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 12:00:00

- ``requests.executor``: how a deferred row's last attempt ran (``direct``, ``flex``: the
  provider's flex tier, ``batch``: inside a job of the provider's Batch API); NULL for
  realtime calls and rows that never ran. It prices the row and reports group by it.
- ``requests.upstream_job_id``: the provider job holding the row. Set, in one statement with
  the job's own row, before anything is uploaded: a worker that dies cannot lose the row nor
  send it twice. The sweeps leave rows held by a job alone; the job's poller finishes them.
- ``upstream_jobs``: one row per provider Batch API job (see ``app/store/upstream_jobs.py``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column(
            "executor",
            sa.Text(),
            nullable=True,
            comment="the path its last attempt ran on: direct, flex or batch",
        ),
    )
    op.add_column(
        "requests",
        sa.Column(
            "upstream_job_id",
            sa.Text(),
            nullable=True,
            comment="the provider Batch API job holding it (upstream_jobs.id)",
        ),
    )
    op.create_table(
        "upstream_jobs",
        sa.Column("id", sa.Text(), primary_key=True, comment="tiergate's id (ujob_...)"),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("deployment", sa.Text(), nullable=False),
        sa.Column("api", sa.Text(), nullable=False, comment="openai or anthropic"),
        sa.Column("endpoint", sa.Text(), nullable=False, comment="the rows' API path"),
        sa.Column("status", sa.Text(), nullable=False, comment="submitting, running or ended"),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("upstream_file_id", sa.Text(), nullable=True),
        sa.Column("upstream_batch_id", sa.Text(), nullable=True),
        sa.Column("upstream_status", sa.Text(), nullable=True, comment="as the provider said"),
        sa.Column(
            "owner", sa.Text(), nullable=True, comment="the worker process submitting or polling"
        ),
        sa.Column("polls", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("counts", postgresql.JSONB(), nullable=True, comment="how its rows ended"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        comment="providers' Batch API jobs that deferred rows were sent in",
    )
    op.create_index(
        "upstream_jobs_open_idx",
        "upstream_jobs",
        ["next_poll_at"],
        postgresql_where=sa.text("status <> 'ended'"),
    )
    op.create_index(
        "requests_upstream_job_idx",
        "requests",
        ["upstream_job_id"],
        postgresql_where=sa.text("upstream_job_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("requests_upstream_job_idx", table_name="requests")
    op.drop_index("upstream_jobs_open_idx", table_name="upstream_jobs")
    op.drop_table("upstream_jobs")
    op.drop_column("requests", "upstream_job_id")
    op.drop_column("requests", "executor")
