"""response cache: exact entries per key and model, and their embeddings when pgvector is there

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 11:40:00

``cache_entries`` holds one answer per (key, model, hash of the canonical request) with its
expiry (``app/cache/``). With the ``vector`` extension (pgvector: the embedded PostgreSQL
ships it) the table also gets ``embedding vector`` for the semantic cache; a server without
it keeps exact caching only (the gateway says so in one log line). The column has no fixed
dimension, so no ANN index: a semantic lookup reads the entries of one key, model and
context (``cache_entries_semantic_idx``), nearest first.

``requests.cache`` records what the cache did for a call (hit, semantic-hit, miss, bypass);
``api_keys.cache_enabled`` turns caching off for a key. Nullable or constant-default columns:
no table rewrite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _vector_available() -> bool:
    """Whether ``CREATE EXTENSION vector`` works here (it may be missing, or not allowed)."""
    bind = op.get_bind()
    if bind.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'vector'").first():
        return True
    if not bind.exec_driver_sql(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
    ).first():
        return False
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    except sa.exc.DBAPIError:
        return False
    return True


def upgrade() -> None:
    op.create_table(
        "cache_entries",
        sa.Column("owner_key_id", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("key", BYTEA(), nullable=False, comment="sha256 of the canonical request"),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column(
            "context",
            BYTEA(),
            nullable=False,
            comment="sha256 of the canonical request without its prompt (semantic matches"
            " need the same one)",
        ),
        sa.Column("prompt", sa.Text(), nullable=True, comment="the prompt's text, for verifying"),
        sa.Column("response_body", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_hit_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["owner_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("owner_key_id", "model", "key"),
    )
    op.create_index("cache_entries_expiry_idx", "cache_entries", ["expires_at"])
    if _vector_available():
        op.execute("ALTER TABLE cache_entries ADD COLUMN embedding vector")
        op.execute(
            "CREATE INDEX cache_entries_semantic_idx ON cache_entries"
            " (owner_key_id, model, context) WHERE embedding IS NOT NULL"
        )
    op.add_column(
        "requests",
        sa.Column("cache", sa.Text(), nullable=True, comment="hit, semantic-hit, miss or bypass"),
    )
    op.add_column(
        "api_keys",
        sa.Column(
            "cache_enabled",
            sa.Boolean(),
            nullable=False,
            server_default=sa.true(),
            comment="false: the response cache is never read nor written for this key",
        ),
    )


def downgrade() -> None:
    op.drop_column("api_keys", "cache_enabled")
    op.drop_column("requests", "cache")
    op.drop_table("cache_entries")
