"""PgBouncer in front of a test database: its own process on a loopback port.

Debian's ``pgbouncer`` package (``apt-get install pgbouncer``) installs the binary in
``/usr/sbin``. PgBouncer refuses to run as root: as root it is started with ``-u`` the owner
of the server's socket directory (the embedded server's own user), which can reach the
socket; it reads its ini and auth file before it drops root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from app.store.dburl import DatabaseURL
from app.testing.processes import free_port

PoolMode = Literal["session", "transaction"]
START_TIMEOUT_S = 10.0


def pgbouncer_binary() -> str | None:
    """The ``pgbouncer`` executable, on ``PATH`` or in ``/usr/sbin`` (Debian); else None."""
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


@dataclass
class PgBouncer:
    """A running PgBouncer; ``url(server_url)`` is the same database reached through it."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def url(self, server: DatabaseURL) -> DatabaseURL:
        """``server``'s user, password and database, through this PgBouncer."""
        return server.with_hosts(("127.0.0.1", self.port))

    def show(self, server: DatabaseURL, what: Literal["POOLS", "SERVERS"]) -> list[dict[str, Any]]:
        """``SHOW POOLS`` (a row per database and user: ``cl_active``, ``sv_idle``, ...) or
        ``SHOW SERVERS`` (a row per server connection: ``database``, ``remote_pid``, ...) on
        the admin console, as ``server``'s user (an admin user)."""
        admin = self.url(server).with_database("pgbouncer")
        # The console speaks the simple protocol only: psycopg uses it for a statement
        # without parameters.
        with psycopg.connect(admin.libpq(), autocommit=True) as conn:
            cursor = conn.execute(f"SHOW {what}")
            names = [c.name for c in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _server_address(server: DatabaseURL) -> tuple[str, int]:
    """Where PgBouncer reaches the server: a host name or a Unix-socket directory, a port."""
    host, port = server.hosts[0] if server.hosts else ("127.0.0.1", None)
    return host, port or 5432


def _run_as(host: str) -> str | None:
    """The user to run as: None unless root; then the owner of a socket directory (it can
    reach the socket), else ``nobody``."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@contextlib.contextmanager
def run_pgbouncer(
    server: DatabaseURL,
    work: Path,
    *,
    pool_mode: PoolMode = "session",
    pool_size: int = 100,
    max_client_conn: int | None = None,
) -> Iterator[PgBouncer]:
    """PgBouncer in ``pool_mode`` in front of ``server``'s PostgreSQL (every database on it),
    listening on a free loopback port; stopped on exit. Clients authenticate as ``trust``
    (loopback only); PgBouncer logs in to the server with the URL's user and password, who
    is also its admin user. ``max_client_conn`` defaults to 4 times ``pool_size``."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed (apt-get install pgbouncer)")
    work.mkdir(parents=True, exist_ok=True)
    host, server_port = _server_address(server)
    port = free_port()
    userlist = work / "userlist.txt"
    user = server.user or "postgres"
    userlist.write_text(f"{_quote(user)} {_quote(server.password or '')}\n")
    ini = work / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={host} port={server_port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {userlist}",
                f"pool_mode = {pool_mode}",
                f"max_client_conn = {max_client_conn or 4 * pool_size}",
                f"admin_users = {user}",
                f"default_pool_size = {pool_size}",
                "",
            ]
        )
    )
    log = work / "pgbouncer.log"
    run_as = _run_as(host)
    args = [binary, *(["-u", run_as] if run_as else []), str(ini)]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, log)
        yield PgBouncer(port=port, proc=proc, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer not listening on {port} after {START_TIMEOUT_S}s")
