"""procrastinate 3.10.0 schema (its shipped schema.sql, vendored in migrations/sql)

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Upgrading procrastinate later means adding its migration files as new revisions.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQL = Path(__file__).parent.parent / "sql" / "procrastinate_3_10_0.sql"


def upgrade() -> None:
    # Raw psycopg execution without parameters: the file is full of ``::`` casts and ``%``
    # signs that sa.text or a parametrised driver call would misread.
    op.get_bind().connection.driver_connection.execute(SQL.read_text())


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DROP_ALL)


DROP_ALL = """
DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
    procrastinate_jobs, procrastinate_workers CASCADE;
DO $$
DECLARE fn record;
BEGIN
    FOR fn IN SELECT oid::regprocedure AS sig FROM pg_proc WHERE proname LIKE 'procrastinate%'
    LOOP EXECUTE 'DROP FUNCTION IF EXISTS ' || fn.sig || ' CASCADE'; END LOOP;
END $$;
DROP TYPE IF EXISTS procrastinate_job_status, procrastinate_job_event_type,
    procrastinate_job_to_defer_v1 CASCADE;
"""
