"""Alembic owns the schema: models and migrations agree; downgrade and upgrade both work."""

from __future__ import annotations

import psycopg
import pytest
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


def test_0017_renames_live_duplicate_key_names_instead_of_failing(databases: DatabaseFactory):
    url = databases.create()
    command.downgrade(alembic_config(url), "0016")
    keys = [  # id, name, revoked, minutes ago
        ("k1", "dup", False, 3),
        ("k2", "dup", False, 2),
        ("k3", "dup", True, 1),
        ("k4", "solo", False, 1),
    ]
    with psycopg.connect(url.libpq(), autocommit=True) as conn:
        for key_id, name, revoked, ago in keys:
            conn.execute(
                "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at, revoked_at)"
                " VALUES (%s, %s, %s, 'tg-x', now() - make_interval(mins => %s),"
                " CASE WHEN %s THEN now() END)",
                (key_id, name, f"hash-{key_id}", ago, revoked),
            )
    upgrade(url)
    with psycopg.connect(url.libpq(), autocommit=True) as conn:
        names = dict(conn.execute("SELECT id, name FROM api_keys").fetchall())
        assert names == {"k1": "dup", "k2": "dup-k2", "k3": "dup", "k4": "solo"}
        with pytest.raises(psycopg.errors.UniqueViolation, match="api_keys_live_name_idx"):
            conn.execute(
                "INSERT INTO api_keys (id, name, key_hash, key_prefix)"
                " VALUES ('k5', 'dup', 'h5', 'x')"
            )
