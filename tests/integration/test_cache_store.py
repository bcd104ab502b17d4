"""The response cache's SQL on real PostgreSQL with pgvector: lookups, writes, the HNSW
index, isolation between keys, clearing and pruning."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.keys import ApiKey
from app.store.cache import CacheStore, Entry, Wanted
from app.store.db import create_engine
from app.store.dburl import DatabaseURL
from app.store.keys import KeyStore
from app.testing.pgbouncer import pgbouncer_binary, run_pgbouncer

DIM = 32


@pytest.fixture
async def cache(engine: AsyncEngine) -> AsyncIterator[CacheStore]:
    """A store on an empty cache (the module shares one database)."""
    async with engine.connect() as conn:
        await conn.execute(text("DELETE FROM cache_entries"))
    store = CacheStore(engine)
    yield store
    await store.release()


def vector(seed: int) -> list[float]:
    rng = random.Random(seed)
    raw = [rng.uniform(-1, 1) for _ in range(DIM)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def entry(owner: str, n: int, *, ttl_s: int = 3600, embedding: bool = True) -> Entry:
    return Entry(
        owner=owner,
        model="m",
        key=hashlib.sha256(f"{owner}-{n}".encode()).digest(),
        endpoint="/v1/responses",
        context=b"ctx",
        prompt=f"user: prompt {n}",
        response_body={"n": n, "owner": owner},
        ttl_s=ttl_s,
        embedding=vector(n) if embedding else None,
    )


async def test_lookups_find_fresh_entries_of_their_own_key_only(
    engine: AsyncEngine, owner: ApiKey, cache: CacheStore
):
    store = cache
    other, _ = await KeyStore(engine).create("other", None)
    await store.put_many([entry(owner.id, 1), entry(owner.id, 2, ttl_s=1), entry(other.id, 3)])
    async with engine.connect() as conn:  # the second one is past its TTL
        await conn.execute(
            text("UPDATE cache_entries SET expires_at = now() WHERE prompt = 'user: prompt 2'")
        )
    mine, stale, theirs = entry(owner.id, 1), entry(owner.id, 2), entry(other.id, 3)
    found = await store.lookup_many(
        [
            Wanted(owner.id, "m", mine.key),
            Wanted(owner.id, "m", mine.key),  # asked twice in one group: both get it
            Wanted(owner.id, "m", stale.key),
            Wanted(owner.id, "m", theirs.key),  # another key's entry
            Wanted(owner.id, "other-model", mine.key),
        ]
    )
    assert found == [{"n": 1, "owner": owner.id}, {"n": 1, "owner": owner.id}, None, None, None]
    async with engine.connect() as conn:
        hits = (
            await conn.execute(
                text("SELECT hits FROM cache_entries WHERE prompt = 'user: prompt 1'")
            )
        ).scalar()
    assert hits == 1  # one statement, one bump


async def test_a_key_with_few_entries_finds_them_among_many_of_another(
    engine: AsyncEngine, owner: ApiKey, cache: CacheStore
):
    store = cache
    assert await store.has_embeddings()
    crowd, _ = await KeyStore(engine).create("crowd", None)
    for start in range(0, 3000, 500):
        await store.put_many([entry(crowd.id, n) for n in range(start, start + 500)])
    await store.put_many([entry(owner.id, n) for n in (10_001, 10_002, 10_003)])
    assert await store.ensure_index(DIM)
    assert not await store.ensure_index(DIM)  # built once
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE cache_entries"))
    found = await store.nearest(owner.id, "m", b"ctx", vector(10_002), 3)
    assert found[0].response_body["n"] == 10_002
    assert sorted(c.response_body["n"] for c in found) == [10_001, 10_002, 10_003]
    assert found[0].similarity > 0.999
    assert all(c.response_body["owner"] == owner.id for c in found)
    # Another context, another model: nothing.
    assert await store.nearest(owner.id, "m", b"other", vector(10_002), 3) == []
    assert await store.nearest(owner.id, "x", b"ctx", vector(10_002), 3) == []


async def test_entries_of_a_revoked_key_are_not_stored_and_clear_takes_names(
    engine: AsyncEngine, owner: ApiKey, cache: CacheStore
):
    store = cache
    keys = KeyStore(engine)
    gone, _ = await keys.create("gone", None)
    await keys.revoke(gone.id)
    await store.put_many([entry(gone.id, 1), entry(owner.id, 2)])
    async with engine.connect() as conn:
        owners = (
            (await conn.execute(text("SELECT DISTINCT owner_key_id FROM cache_entries")))
            .scalars()
            .all()
        )
    assert owners == [owner.id]
    # A name matches every key that has had it: a key revoked, then its name given again
    # (live names are unique, migration 0017).
    first, _ = await keys.create("reused", None)
    await store.put_many([entry(first.id, 3)])
    await keys.revoke(first.id)
    again, _ = await keys.create("reused", None)
    await store.put_many([entry(again.id, 4)])
    assert await store.clear(key="reused") == 2
    assert await store.clear() == 1  # the owner's


async def test_prune_deletes_expired_entries_in_chunks(
    engine: AsyncEngine, owner: ApiKey, cache: CacheStore
):
    store = cache
    await store.put_many([entry(owner.id, n, embedding=False) for n in range(5)])
    async with engine.connect() as conn:
        await conn.execute(
            text("UPDATE cache_entries SET expires_at = now() WHERE prompt <> 'user: prompt 4'")
        )
    assert await store.prune_chunk(3) == 3
    assert await store.prune_chunk(3) == 1
    assert await store.prune_chunk(3) == 0
    async with engine.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM cache_entries"))).scalar()
    assert left == 1


@pytest.mark.skipif(pgbouncer_binary() is None, reason="the pgbouncer binary is not installed")
async def test_semantic_search_through_a_transaction_mode_pooler(
    database: DatabaseURL, engine: AsyncEngine, owner: ApiKey, cache: CacheStore, tmp_path: Path
):
    """Behind PgBouncer in transaction mode (DATABASE_DIRECT_URL set): the index is built
    under its session lock on the direct address (released after), and the scans, 8 at once
    on 2 server connections, set pgvector's iterative scan in their own transaction."""
    await cache.put_many([entry(owner.id, n) for n in range(20)])
    with run_pgbouncer(database, tmp_path / "pgbouncer", pool_mode="transaction", pool_size=2) as b:
        url = b.url(database).with_direct(database)
        pooled = create_engine(url, pool_size=4, max_overflow=4)
        store = CacheStore(pooled, url.direct)
        try:
            assert await store.has_embeddings()
            assert store.iterative_scan  # pgvector >= 0.8: the SET LOCAL path
            await store.ensure_index(DIM)
            async with engine.connect() as conn:
                locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                assert (await conn.execute(text(locks))).scalar() == 0
            found = await asyncio.gather(
                *(store.nearest(owner.id, "m", b"ctx", vector(n), 1) for n in range(8))
            )
            assert [f[0].response_body["n"] for f in found] == list(range(8))
        finally:
            await store.release()
            await pooled.dispose()
