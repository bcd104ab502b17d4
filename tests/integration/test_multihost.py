"""A multi-host DATABASE_URL whose first host never answers: every driver tiergate uses
reaches the next host, as libpq does (one ``connect_timeout`` per host)."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from sqlalchemy import text

from app.store.db import create_engine
from app.store.dburl import DatabaseURL, connect_asyncpg
from app.store.listener import require_notifications

TIMEOUT_S = 1


@pytest.fixture
def silent_host() -> Iterator[tuple[str, int]]:
    """A TCP port whose kernel completes the handshake but whose owner never speaks: a
    frozen server (or a stopped postmaster) as its clients see it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()


@pytest.fixture
def behind_a_silent_host(database: DatabaseURL, silent_host: tuple[str, int]) -> DatabaseURL:
    url = database.with_hosts(silent_host, *database.hosts)
    wishes = (("connect_timeout", str(TIMEOUT_S)), ("target_session_attrs", "read-write"))
    return DatabaseURL.parse(dataclasses.replace(url, params=url.params + wishes).libpq())


async def test_every_driver_skips_a_host_that_never_answers(behind_a_silent_host: DatabaseURL):
    url = behind_a_silent_host
    assert len(url.hosts) == 2 and url.target_session_attrs == "read-write"
    started = time.monotonic()
    conn = await connect_asyncpg(url)
    try:
        assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
    finally:
        await conn.close()
    assert time.monotonic() - started < TIMEOUT_S + 2
    # asyncpg alone spends its timeout on the first host and never tries the second.
    with pytest.raises(TimeoutError):
        await asyncpg.connect(**url.asyncpg_connect_args())

    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as sa:
            assert (await sa.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    async with await psycopg.AsyncConnection.connect(url.libpq()) as aconn:
        assert (await (await aconn.execute("SELECT 1")).fetchone()) == (1,)
    with psycopg.connect(url.libpq()) as sync:
        assert sync.execute("SELECT 1").fetchone() == (1,)
    await require_notifications(url)


async def test_no_host_left_raises_what_the_last_one_said(database: DatabaseURL):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nothing listens there now
    url = DatabaseURL.parse(
        f"postgresql://u@127.0.0.1:{port},127.0.0.1:{port}/x?connect_timeout={TIMEOUT_S}"
    )
    with pytest.raises(OSError):
        await connect_asyncpg(url)
