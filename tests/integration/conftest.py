"""Integration fixtures: repositories on a real, freshly migrated database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from app.ids import new_id
from app.keys import ApiKey
from app.store.db import create_engine
from app.store.dburl import DatabaseURL
from app.store.keys import KeyStore
from app.store.realtime import RealtimeTracker
from app.store.requests import RequestStore
from app.store.sweeps import RequestSweeps


@pytest.fixture
async def engine(database: DatabaseURL) -> AsyncIterator:
    engine = create_engine(database, pool_size=2, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine) -> RequestStore:
    return RequestStore(engine)


@pytest.fixture
def sweeps(engine) -> RequestSweeps:
    return RequestSweeps(engine)


@pytest.fixture
async def tracker(engine) -> AsyncIterator[RealtimeTracker]:
    tracker = RealtimeTracker(engine)
    yield tracker
    await tracker.release()


@pytest.fixture
async def owner(engine) -> ApiKey:
    """A new key per test (its name too: live key names are unique)."""
    key, _secret = await KeyStore(engine).create(new_id("integration-"), None)
    return key


async def insert_file_batch(engine, owner: ApiKey, status: str) -> str:  # type: ignore[no-untyped-def]
    """A Batch API batch row in ``status`` (no lines, no jobs); returns its id."""
    batch_id = new_id("batch_")
    async with engine.connect() as conn:
        await conn.execute(
            text(
                "INSERT INTO batches (id, owner_key_id, kind, endpoint, status,"
                " completion_window, expires_at) VALUES (:id, :owner, 'file',"
                " '/v1/responses', :status, '24h', now() + interval '1 day')"
            ),
            {"id": batch_id, "owner": owner.id, "status": status},
        )
    return batch_id
