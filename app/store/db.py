"""The SQLAlchemy engine (asyncpg) every repository runs on, sized explicitly."""

from __future__ import annotations

import json

import asyncpg
import psycopg
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.store.dburl import DatabaseURL


def create_engine(
    url: DatabaseURL, *, pool_size: int, max_overflow: int, application_name: str = "tiergate"
) -> AsyncEngine:
    """A bounded pool: at most ``pool_size + max_overflow`` connections per process.

    Every repository query is one statement (CTEs do multi-table work), so the engine runs
    in autocommit: no BEGIN/COMMIT round trips. No pre-ping either (a round trip per
    checkout): after a database restart, the first failure invalidates the pool and the
    request gets a 503.
    """
    return create_async_engine(
        url.sqlalchemy(),
        pool_size=pool_size,
        max_overflow=max_overflow,
        isolation_level="AUTOCOMMIT",
        pool_timeout=10,
        json_serializer=lambda obj: json.dumps(obj, separators=(",", ":")),
        connect_args={"server_settings": {"application_name": application_name}},
    )


def database_unavailable(exc: BaseException) -> bool:
    """True for the errors a down or restarting database produces."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.OperationalError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError | sqlalchemy.exc.InterfaceError):
        inner: BaseException = exc.orig or exc
        exc = inner.__cause__ or inner
    return isinstance(
        exc,
        OSError
        | ConnectionError
        | psycopg.OperationalError  # procrastinate's driver, and the LISTEN/NOTIFY check's
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.InterfaceError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.TooManyConnectionsError,
    )
