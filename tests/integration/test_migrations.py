"""Alembic owns the schema: models and migrations agree; downgrade and upgrade both work."""

from __future__ import annotations

import psycopg
from alembic import command

from app.store.migrate import alembic_config, upgrade
from app.testing.postgres import DatabaseFactory


def test_models_and_migrations_are_in_sync(databases: DatabaseFactory):
    url = databases.create()
    command.check(alembic_config(url))  # raises if autogenerate finds a difference


def test_downgrade_to_base_and_back(databases: DatabaseFactory):
    url = databases.create()
    command.downgrade(alembic_config(url), "base")
    with psycopg.connect(url.libpq()) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version'"
        ).fetchone()
    assert left == (0,)
    upgrade(url)
    with psycopg.connect(url.libpq()) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables")}
    assert {"requests", "batches", "api_keys", "procrastinate_jobs"} <= tables
