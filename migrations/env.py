"""Alembic environment: the URL comes from tiergate's own resolution (DATABASE_URL or embedded)."""

from __future__ import annotations

from logging.config import fileConfig

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import NullType

from app.settings import Settings
from app.store.dburl import DatabaseURL
from app.store.embedded import resolve_database
from app.store.schema import metadata

# pgvector's type, known to reflection (the column itself is left out of the comparison).
ischema_names.setdefault("vector", NullType)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> DatabaseURL:
    url: DatabaseURL | None = config.attributes.get("database_url")
    if url is None:
        settings = Settings.from_env()
        url = resolve_database(
            settings.database_url,
            settings.home,
            create=True,
            direct_url=settings.database_direct_url,
        )
    # The session advisory lock below needs a session of its own (not a transaction pooler).
    return url.session()


# Alembic runs synchronously on psycopg 3, which reads the URL itself (several hosts too).
DIALECT = "postgresql+psycopg://"


def _include_object(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
    # procrastinate's tables are owned by its own SQL (revision 0001), not by our metadata.
    if type_ == "table" and name and name.startswith("procrastinate_"):
        return False
    # The semantic cache's pgvector column and index exist only where pgvector does (0016).
    return not (
        (type_ == "column" and name == "embedding" and obj.table.name == "cache_entries")
        or (type_ == "index" and name == "cache_entries_semantic_idx")
        or (type_ == "index" and (name or "").startswith("cache_entries_hnsw_"))
    )


def run_migrations_offline() -> None:
    context.configure(url=DIALECT, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    engine = create_engine(
        DIALECT, poolclass=pool.NullPool, creator=lambda: psycopg.connect(url.libpq())
    )
    with engine.connect() as connection:
        # Several processes may migrate at once (serve + worker): one at a time.
        connection.exec_driver_sql("SELECT pg_advisory_lock(74210501)")
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=metadata,
            include_object=_include_object,
            compare_server_default=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.exec_driver_sql("SELECT pg_advisory_unlock(74210501)")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
