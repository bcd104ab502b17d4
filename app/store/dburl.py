"""One database address, spelled for each driver that needs it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url


@dataclass(frozen=True)
class DatabaseURL:
    """A PostgreSQL address; ``libpq()`` for psycopg/asyncpg, ``sqlalchemy()`` for the engine."""

    url: URL

    @classmethod
    def parse(cls, raw: str) -> DatabaseURL:
        url = make_url(raw)
        if not url.drivername.startswith("postgres"):
            raise ValueError(f"not a PostgreSQL URL: {url.drivername}")
        return cls(url.set(drivername="postgresql"))

    def with_database(self, name: str) -> DatabaseURL:
        return DatabaseURL(self.url.set(database=name))

    @property
    def database(self) -> str:
        return self.url.database or "postgres"

    def sqlalchemy(self) -> str:
        return self.url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)

    def sqlalchemy_sync(self) -> str:
        """For Alembic, which runs synchronously on psycopg 3."""
        return self.url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)

    def libpq(self) -> str:
        return self.url.render_as_string(hide_password=False)

    def asyncpg_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``asyncpg.connect`` (handles Unix-socket ``?host=``)."""
        host = self.url.query.get("host") or self.url.host
        if isinstance(host, tuple):
            host = host[0]
        return {
            "host": host,
            "port": self.url.port,
            "user": self.url.username,
            "password": self.url.password,
            "database": self.database,
        }
