"""stored chat completions: ``requests.metadata``, ``requests.deleted_at``, their index

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 10:00:00

OpenAI's stored chat completions API (``GET /v1/chat/completions``, ``.../{id}/messages``,
``POST`` and ``DELETE /v1/chat/completions/{id}``) reads the rows tiergate already keeps:

- ``metadata``: the metadata ``POST /v1/chat/completions/{id}`` set; NULL (every row until
  then) means the request's own, ``body -> 'metadata'``, which stays as it was sent.
- ``deleted_at``: ``DELETE /v1/chat/completions/{id}`` clears the row's request body and
  answer and stamps it, so the id is a 404 everywhere while usage and cost stay in the reports.
- ``requests_stored_chat_idx``: the listed rows (completed chat completions, not deleted, not
  created with ``store: false``) by key, ``created_at`` and ``id``: a page is one range of it,
  whatever the table holds. Built concurrently (a large ``requests`` table stays writable).

Both columns are nullable without a default: adding them rewrites nothing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STORED_CHAT = (
    "endpoint = '/v1/chat/completions' AND status = 'completed' AND deleted_at IS NULL"
    " AND (body -> 'store') IS DISTINCT FROM 'false'::jsonb"
)


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column(
            "metadata",
            JSONB,
            nullable=True,
            comment="a chat completion's metadata as POST /v1/chat/completions/{id} set it;"
            " NULL: the request's own (body->'metadata')",
        ),
    )
    op.add_column(
        "requests",
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="DELETE /v1/chat/completions/{id}: body and answer cleared, usage and cost"
            " kept",
        ),
    )
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS requests_stored_chat_idx"
            f" ON requests (owner_key_id, created_at, id) WHERE {STORED_CHAT}"
        )


def downgrade() -> None:
    op.drop_index("requests_stored_chat_idx", table_name="requests")
    op.drop_column("requests", "deleted_at")
    op.drop_column("requests", "metadata")
