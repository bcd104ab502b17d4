"""``tiergate db status`` and ``tiergate db stop``: the embedded PostgreSQL under TIERGATE_HOME.

The embedded server keeps running after ``tiergate serve`` exits (so that other commands find
it); these commands show it and stop it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.settings import Settings
from app.store.embedded import EmbeddedPostgres

NOT_RUNNING = 3  # ``db status`` of a stopped server (as LSB init scripts say it)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    """Print the embedded server's state, or stop it: one line."""
    server = EmbeddedPostgres(settings.home)
    if not server.exists():
        print(
            f"tiergate: no embedded PostgreSQL in {server.pgdata}; `tiergate serve` or"
            " `tiergate migrate` creates one there (set TIERGATE_HOME to look elsewhere)",
            file=sys.stderr,
        )
        return 1
    if settings.database_url:
        print(
            "note: DATABASE_URL is set; tiergate commands use it, not this server", file=sys.stderr
        )
    if args.action == "stop":
        pid = server.shut_down()
        if pid is None:
            print(f"embedded postgres: not running (data in {server.pgdata})")
        else:
            print(f"embedded postgres: stopped (pid {pid}, data in {server.pgdata})")
        return 0
    state = server.running()
    if state is None:
        print(f"embedded postgres: not running (data in {server.pgdata})")
        return NOT_RUNNING
    pid, url = state
    print(f"embedded postgres: running (pid {pid}, data in {server.pgdata}, url {url.redacted()})")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``db status|stop`` to the ``tiergate`` parser's subcommands."""
    db = sub.add_parser("db", help="the embedded PostgreSQL (under TIERGATE_HOME): status, stop")
    actions = db.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="running or not (exit 3), its pid, data directory and URL")
    actions.add_parser(
        "stop", help="stop it (it keeps running after serve exits; any command restarts it)"
    )
    db.set_defaults(func=cmd_db)
