"""What counts as "the database is away" (a 503 with retry-after), not a bug (a 500)."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy.exc

from app.store.db import database_unavailable


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        # a failover: no host is the primary yet
        asyncpg.TargetServerAttributeNotMatched("None of the hosts match 'read-write'"),
        # the primary SIGKILLed mid-statement (tests/e2e/test_failover.py saw it as a 500)
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_database_away_is_unavailable(exc: BaseException):
    assert database_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("a bug"),
        asyncpg.UniqueViolationError("duplicate key"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_bug_is_not(exc: BaseException):
    assert not database_unavailable(exc)
