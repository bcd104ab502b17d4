"""One database address, spelled for each driver that needs it."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import unquote

import psycopg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

CONNECT_TIMEOUT_S = 5
EXPECTED = "postgresql://user:password@host:5432/database"
UNSET_HINT = "or unset DATABASE_URL to use the embedded PostgreSQL"


class DatabaseProblem(Exception):
    """A database tiergate cannot use; the message is one line: what, where, what to do."""


class BadDatabaseURL(DatabaseProblem, ValueError):
    """``DATABASE_URL`` is not a PostgreSQL URL."""


class DatabaseUnreachable(DatabaseProblem):
    """The server at ``DATABASE_URL`` refused the connection (or did not answer)."""


def redact(raw: str) -> str:
    """``raw`` with the password of any ``scheme://user:password@`` part shown as ``***``."""
    return re.sub(r"(://[^:/@]*:)[^/?#]*@", r"\1***@", raw)


@dataclass(frozen=True)
class DatabaseURL:
    """A PostgreSQL address; ``libpq()`` for psycopg/asyncpg, ``sqlalchemy()`` for the engine.

    ``direct`` (``DATABASE_DIRECT_URL``) is the same database reached with a session of its
    own: set when this address is a pooler in transaction mode (PgBouncer's
    ``pool_mode = transaction``), where only single transactions may go.
    """

    url: URL
    direct: DatabaseURL | None = None

    @classmethod
    def parse(cls, raw: str, setting: str = "DATABASE_URL") -> DatabaseURL:
        """``raw`` read as a PostgreSQL URL; ``setting`` names where it came from in errors."""
        try:
            url = make_url(raw)
        except ArgumentError:
            raise BadDatabaseURL(
                f"{setting} is not a URL: {redact(raw)!r}; expected {EXPECTED}, {UNSET_HINT}"
            ) from None
        except ValueError:  # a port that is not a number (or several hosts)
            raise BadDatabaseURL(
                f"{setting} has a host or port that cannot be read: {redact(raw)!r};"
                f" expected {EXPECTED}, {UNSET_HINT}"
            ) from None
        if not url.drivername.startswith("postgres"):
            raise BadDatabaseURL(
                f"{setting} is not a PostgreSQL URL: {redact(raw)}; expected {EXPECTED},"
                f" {UNSET_HINT}"
            )
        return cls(url.set(drivername="postgresql"))

    def redacted(self) -> str:
        """The URL to show a person: its password as ``***`` (a socket path unescaped)."""
        return unquote(self.url.render_as_string(hide_password=True))

    def probe(self, setting: str = "DATABASE_URL") -> None:
        """Connect once; raise ``DatabaseUnreachable`` saying why not and what to do."""
        try:
            with psycopg.connect(self.libpq(), connect_timeout=CONNECT_TIMEOUT_S):
                pass
        except psycopg.OperationalError as exc:
            reason, hint = _diagnose(str(exc))
            raise DatabaseUnreachable(
                f"cannot connect to the database at {self.redacted()} ({setting}): {reason}; {hint}"
            ) from None

    def with_database(self, name: str) -> DatabaseURL:
        direct = None if self.direct is None else self.direct.with_database(name)
        return DatabaseURL(self.url.set(database=name), direct)

    def with_direct(self, direct: DatabaseURL) -> DatabaseURL:
        """This address as a transaction-mode pooler, ``direct`` for what needs a session."""
        return replace(self, direct=direct)

    @property
    def transaction_pooled(self) -> bool:
        """Whether consecutive transactions may run on different server sessions."""
        return self.direct is not None

    def session(self) -> DatabaseURL:
        """Where a session of its own goes (LISTEN, session advisory locks, migrations)."""
        return self.direct or self

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


def _diagnose(message: str) -> tuple[str, str]:
    """libpq's (often multi-line) error as a short reason and what to do about it."""
    text = message.lower()
    user_hint = f"check the user and password in DATABASE_URL, {UNSET_HINT}"
    if "password authentication failed" in text:
        return "the password was refused", user_hint
    if "no password supplied" in text:
        return "the server wants a password", user_hint
    if found := re.search(r'database "([^"]+)" does not exist', message):
        return (
            f'there is no database "{found[1]}"',
            f"create it (createdb {found[1]}) or fix the name in DATABASE_URL",
        )
    if found := re.search(r'role "([^"]+)" does not exist', message):
        return f'there is no user "{found[1]}"', user_hint
    server_hint = f"is PostgreSQL running there? Start it or fix host and port, {UNSET_HINT}"
    if "connection refused" in text:
        return "connection refused", server_hint
    if "could not translate host name" in text or "name or service not known" in text:
        return "unknown host name", f"fix the host in DATABASE_URL, {UNSET_HINT}"
    if "timeout expired" in text:
        return f"no answer within {CONNECT_TIMEOUT_S} s", server_hint
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    last = lines[-1] if lines else message
    return last.rpartition("FATAL:")[2].strip() or last, f"fix DATABASE_URL, {UNSET_HINT}"
