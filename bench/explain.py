"""EXPLAIN ANALYZE of tiergate's hot statements on a database, each in a rolled-back transaction.

The statements are the ones the code runs (imported from ``app.store``), with parameters as a
busy deployment passes them: a worker claiming flex work for a served model and for the
model with the backlog, claiming batch lines, the maintenance sweeps, the queue-depth count,
retention, a read by id. ``bench/scale.py --explain FILE`` runs it on the seeded database.

Usage: python bench/explain.py DATABASE_URL [--out FILE]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import ClauseElement, bindparam, select
from sqlalchemy.dialects import postgresql

from app.settings import Retention
from app.store import batches, orphans, queue_depth, requests, retention, sweeps
from app.store.schema import requests as requests_table

Params = Callable[[psycopg.Connection[Any]], dict[str, Any]]


def _one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return row[0] if row else None


def _get_by_id() -> ClauseElement:
    return select(requests_table).where(
        requests_table.c.id == bindparam("id"), requests_table.c.owner_key_id == bindparam("owner")
    )


def _clear_depth(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    conn.execute(str(queue_depth.CLEAR))  # the count replaces the last one, as it does live
    return {}


DAYS = Retention().events_days
HOT: list[tuple[str, ClauseElement, Params]] = [
    (
        "flex claim, served model (empty queue)",
        requests.CLAIM,
        lambda c: {"worker": "explain", "models": ["remote"], "counts": [16]},
    ),
    (
        "flex claim, model with the backlog",
        requests.CLAIM,
        lambda c: {"worker": "explain", "models": ["unserved"], "counts": [16]},
    ),
    ("retries made due", requests.PROMOTE_DUE, lambda c: {}),
    (
        "batch line claim",
        batches.CLAIM,
        lambda c: {
            "batch": _one(c, "SELECT id FROM batches WHERE kind = 'file' ORDER BY created_at DESC"),
            "job": 1,
            "n": 64,
        },
    ),
    ("sweep: expire overdue requests", sweeps.EXPIRE_OVERDUE, lambda c: {}),
    ("sweep: rescue rows of dead workers", sweeps.RESCUE_CLAIMED, lambda c: {"silent_s": 30}),
    (
        "sweep: close realtime rows of dead gateways",
        sweeps.REAP_REALTIME,
        lambda c: {"silent_s": 30},
    ),
    ("sweep: expire batches", batches.EXPIRE, lambda c: {}),
    ("sweep: release orphaned lines", orphans.RELEASE_LINES, lambda c: {}),
    ("sweep: restart batches", orphans.RESTART_BATCHES, lambda c: {}),
    ("queue depth count", queue_depth.COUNT, _clear_depth),
    ("retention: requests", retention.PRUNE_REQUESTS, lambda c: {"days": 30, "n": 1000}),
    ("retention: procrastinate jobs", retention.PRUNE_JOBS, lambda c: {"days": DAYS, "n": 1000}),
    (
        "retention: webhook deliveries",
        retention.PRUNE_DELIVERIES,
        lambda c: {"days": 30, "n": 1000},
    ),
    (
        "GET /v1/responses/{id}",
        _get_by_id(),
        lambda c: {
            "id": "resp_seed1",
            "owner": _one(c, "SELECT owner_key_id FROM requests WHERE id = 'resp_seed1'"),
        },
    ),
]


def _sql(statement: ClauseElement) -> tuple[str, dict[str, Any]]:
    compiled = statement.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[attr-defined]
    return str(compiled), dict(compiled.params)


def explain(url: str) -> list[str]:
    """Each hot statement's plan with its execution time, rolled back."""
    out: list[str] = []
    with psycopg.connect(url) as conn:
        for name, statement, params in HOT:
            sql, defaults = _sql(statement)
            values = {**defaults, **params(conn)}
            try:
                plan = [
                    row[0]
                    for row in conn.execute(
                        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, values
                    ).fetchall()
                ]
            except psycopg.Error as exc:
                plan = [f"(not explained: {exc})"]
            conn.rollback()
            took = next(
                (m.group(1) for p in plan if (m := re.search(r"Execution Time: (\S+)", p))), "?"
            )
            out.append(f"-- {name}: {took} ms")
            out.extend("   " + line for line in plan)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="a libpq URL of a tiergate database")
    parser.add_argument("--out", help="write the plans here instead of printing them")
    args = parser.parse_args()
    lines = explain(args.url)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        for line in lines:
            if line.startswith("-- "):
                print(line)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
