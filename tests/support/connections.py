"""Who is connected to the test's database, as PostgreSQL sees it."""

from __future__ import annotations

import psycopg

# Client connections only: an autovacuum worker also has the database's name (and no
# application_name), and comes and goes with the load.
CLIENTS = (
    "datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


def connections_by_app(db: psycopg.Connection) -> dict[str, int]:
    """The client connections to ``db``'s database (other than ``db``), by application_name."""
    rows = db.execute(
        f"SELECT application_name, count(*) FROM pg_stat_activity WHERE {CLIENTS}"
        " GROUP BY application_name"
    ).fetchall()
    return dict(rows)
