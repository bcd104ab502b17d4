"""Integration fixtures: repositories on a real, freshly migrated database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.dburl import DatabaseURL
from app.store.db import create_engine
from app.store.keys import ApiKey, KeyStore
from app.store.requests import RequestStore


@pytest.fixture
async def engine(database: DatabaseURL) -> AsyncIterator:
    engine = create_engine(database, pool_size=2, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def store(engine) -> AsyncIterator[RequestStore]:
    store = RequestStore(engine)
    yield store
    await store.release()


@pytest.fixture
async def owner(engine) -> ApiKey:
    key, _secret = await KeyStore(engine).create("integration", None)
    return key
