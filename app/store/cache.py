"""SQL of the response cache (``cache_entries``, migration 0016).

Lookups and writes of concurrent calls share statements (group commit, ``app/cache/``). A
hit bumps the entry's ``hits`` in the statement that reads it. Semantic lookups need the
``embedding vector`` column, which exists only where pgvector does; they read the entries of
one key, model and context, nearest first, so their cost grows with what that one key has
cached for that model and context, never with the table.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.db import HeldConnection, create_engine
from app.store.dburl import DatabaseURL
from app.store.new_requests import NewRequest, new_request_arrays
from app.store.outcomes import dumps
from app.vocabulary import CacheResult, Status

# Found entries, and their hit counts bumped, in one statement; ``n`` is the asked position.
# (asyncpg placeholders: lookups and writes run on held connections, see ``db.py``.)
LOOKUP = """
UPDATE cache_entries AS c SET hits = c.hits + 1, last_hit_at = now()
FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS w(owner, model, key, n)
WHERE c.owner_key_id = w.owner AND c.model = w.model AND c.key = w.key
  AND c.expires_at > now()
RETURNING w.n, c.response_body::text AS response_body
"""

# Embeddings of up to this many dimensions get an HNSW index as ``vector``, then as
# ``halfvec`` (pgvector's limits); beyond, the nearest are found by reading them all.
VECTOR_INDEX_MAX_DIMS = 2000
HALFVEC_INDEX_MAX_DIMS = 4000


def _vector_type(dims: int) -> str | None:
    if dims <= VECTOR_INDEX_MAX_DIMS:
        return "vector"
    return "halfvec" if dims <= HALFVEC_INDEX_MAX_DIMS else None


def index_name(dims: int) -> str:
    return f"cache_entries_hnsw_{dims}"


def _nearest_sql(dims: int) -> str:
    """The nearest entries of one key, model and context among the embeddings of ``dims``
    dimensions. The distance is spelled as the HNSW index of that dimension spells it (a
    partial expression index, created by :meth:`CacheStore.ensure_index`), so the planner
    can take it when the key has many entries, or read the key's few entries by
    ``cache_entries_semantic_idx``; it decides by the statistics."""
    kind = _vector_type(dims)
    column = f"CAST(embedding AS {kind}({dims}))" if kind else "embedding"
    wanted = "CAST(:embedding AS vector)"
    if kind:
        wanted = f"CAST({wanted} AS {kind}({dims}))"
    return f"""
SELECT key, prompt, response_body, 1 - ({column} <=> {wanted}) AS similarity
FROM cache_entries
WHERE vector_dims(embedding) = {dims} AND owner_key_id = :owner AND model = :model
  AND context = :context AND embedding IS NOT NULL AND expires_at > now()
ORDER BY {column} <=> {wanted}
LIMIT :limit
"""


def _index_sql(dims: int) -> str | None:
    kind = _vector_type(dims)
    if kind is None:
        return None
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index_name(dims)} ON cache_entries"
        f" USING hnsw ((CAST(embedding AS {kind}({dims}))) {kind}_cosine_ops)"
        f" WHERE vector_dims(embedding) = {dims}"
    )


# pgvector 0.8: a filtered HNSW scan goes on until it has found enough rows of the key.
ITERATIVE_SCAN = text("SET hnsw.iterative_scan = relaxed_order")
ITERATIVE_SCAN_LOCAL = text("SET LOCAL hnsw.iterative_scan = relaxed_order")
INDEX_STATE = text(
    "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid"
    " WHERE c.relname = :name"
)
# One process at a time builds an index (any number may try).
INDEX_LOCK = 74210516

BUMP = text(
    "UPDATE cache_entries SET hits = hits + 1, last_hit_at = now()"
    " WHERE owner_key_id = :owner AND model = :model AND key = :key"
)


def _put_sql(semantic: bool) -> str:
    embedding = "CAST(u.embedding AS vector)" if semantic else "NULL"
    column = ", embedding" if semantic else ""
    updated = ", embedding = excluded.embedding" if semantic else ""
    return f"""
INSERT INTO cache_entries AS c (owner_key_id, model, key, endpoint, context, prompt,
                                response_body, expires_at{column})
SELECT u.owner, u.model, u.key, u.endpoint, u.context, u.prompt, CAST(u.body AS jsonb),
       now() + make_interval(secs => u.ttl_s){", " + embedding if semantic else ""}
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bytea[], $6::text[],
            $7::text[], $8::integer[], $9::text[])
     AS u(owner, model, key, endpoint, context, prompt, body, ttl_s, embedding)
JOIN api_keys k ON k.id = u.owner AND k.revoked_at IS NULL
ON CONFLICT (owner_key_id, model, key) DO UPDATE
SET response_body = excluded.response_body, expires_at = excluded.expires_at,
    prompt = excluded.prompt, created_at = now(){updated}
"""


PUT = {semantic: _put_sql(semantic) for semantic in (False, True)}

# Rows of calls answered from the cache at the gateway: final when inserted.
RECORD_HITS = text(
    f"""
INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, background, stream,
                      status, attempts, body, response_status, response_body, input_tokens,
                      output_tokens, total_tokens, cached_tokens, reasoning_tokens,
                      usage_estimated, cost_usd, cache, created_at, started_at, finished_at)
SELECT u.id, u.owner, u.endpoint, u.model, u.tier, u.background, u.stream,
       '{Status.COMPLETED}', 0, CAST(u.body AS jsonb), 200, CAST(u.response_body AS jsonb),
       u.input_tokens, u.output_tokens, u.total_tokens, u.cached_tokens, u.reasoning_tokens,
       u.usage_estimated, u.cost_usd, u.cache, u.at, u.at, u.at
FROM unnest(CAST(:ids AS text[]), CAST(:owners AS text[]), CAST(:endpoints AS text[]),
            CAST(:models AS text[]), CAST(:tiers AS text[]), CAST(:backgrounds AS boolean[]),
            CAST(:streams AS boolean[]), CAST(:bodies AS text[]),
            CAST(:response_bodies AS text[]), CAST(:input_tokens AS int[]),
            CAST(:output_tokens AS int[]), CAST(:total_tokens AS int[]),
            CAST(:cached_tokens AS int[]), CAST(:reasoning_tokens AS int[]),
            CAST(:usage_estimated AS boolean[]), CAST(:costs AS numeric[]),
            CAST(:caches AS text[]), CAST(:ats AS timestamptz[]))
     AS u(id, owner, endpoint, model, tier, background, stream, body, response_body,
          input_tokens, output_tokens, total_tokens, cached_tokens, reasoning_tokens,
          usage_estimated, cost_usd, cache, at)
"""
)

CLEAR = text(
    """
DELETE FROM cache_entries AS c
WHERE (CAST(:model AS text) IS NULL OR c.model = :model)
  AND (CAST(:key_name AS text) IS NULL OR c.owner_key_id IN (
        SELECT id FROM api_keys WHERE name = :key_name OR id = :key_name))
"""
)

# Expired entries, a bounded chunk per statement (the sweep repeats while chunks are full).
PRUNE = text(
    """
DELETE FROM cache_entries WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM cache_entries WHERE expires_at <= now() LIMIT :chunk))
"""
)

HAS_EMBEDDINGS = text(
    "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector') FROM pg_attribute"
    " WHERE attrelid = to_regclass('cache_entries') AND attname = 'embedding'"
    " AND NOT attisdropped"
)


@dataclass(frozen=True)
class Wanted:
    """One exact lookup."""

    owner: str
    model: str
    key: bytes


@dataclass(frozen=True)
class Candidate:
    """A semantic neighbour of a prompt."""

    key: bytes
    prompt: str | None
    response_body: Any
    similarity: float


@dataclass(frozen=True)
class Entry:
    """An answer to remember."""

    owner: str
    model: str
    key: bytes
    endpoint: str
    context: bytes
    prompt: str | None
    response_body: Any
    ttl_s: int
    embedding: list[float] | None = None


@dataclass(frozen=True, kw_only=True)
class HitRow(NewRequest):
    """The request row of a call answered from the cache."""

    response_body: Any
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    usage_estimated: bool
    cost_usd: Decimal | None
    cache: CacheResult
    at: dt.datetime


def vector_literal(vector: list[float]) -> str:
    """pgvector's text form of a vector."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class CacheStore:
    """Reads and writes ``cache_entries``."""

    def __init__(self, engine: AsyncEngine, direct: DatabaseURL | None = None) -> None:
        """``direct``: the session address when ``engine`` goes through a transaction-mode
        pooler (``DatabaseURL.direct``); a session setting or lock cannot go through it."""
        self.engine = engine
        self.direct = direct
        # Lookups and writes each come from one group-commit loop: one held connection each.
        self._reads = HeldConnection(engine)
        self._writes = HeldConnection(engine)
        self.iterative_scan = False  # pgvector >= 0.8: filtered HNSW scans go on until found

    async def has_embeddings(self) -> bool:
        """Whether this database can hold embeddings (pgvector was there at migration)."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(HAS_EMBEDDINGS)).first()
        if found is None:
            return False
        version = tuple(int(p) for p in str(found[0] or "0").split(".")[:2] if p.isdigit())
        self.iterative_scan = version >= (0, 8)
        return True

    async def ensure_index(self, dims: int) -> bool:
        """Build the HNSW index of ``dims``-dimension embeddings unless it exists; whether
        one was built (an invalid one, left by a build that died, is built again)."""
        sql = _index_sql(dims)
        if sql is None:
            return False
        name = index_name(dims)
        # A session lock (CREATE INDEX CONCURRENTLY cannot run in a transaction): its own
        # session, on the direct address behind a transaction-mode pooler.
        engine = self.engine
        if self.direct is not None:
            engine = create_engine(self.direct, pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f"SELECT pg_advisory_lock({INDEX_LOCK})"))
                try:
                    valid = (await conn.execute(INDEX_STATE, {"name": name})).scalar()
                    if valid:
                        return False
                    if valid is False:
                        await conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    await conn.execute(text(sql))
                    return True
                finally:
                    await conn.execute(text(f"SELECT pg_advisory_unlock({INDEX_LOCK})"))
        finally:
            if engine is not self.engine:
                await engine.dispose()

    async def lookup_many(self, wanted: list[Wanted]) -> list[Any | None]:
        """Each wanted entry's answer if it is cached and fresh, in order (one statement;
        repeated keys are looked up once)."""
        first: dict[Wanted, int] = {}
        for w in wanted:
            first.setdefault(w, len(first))
        unique = list(first)
        owners = [w.owner for w in unique]
        models = [w.model for w in unique]
        keys = [w.key for w in unique]
        rows = await self._reads.run(lambda conn: conn.fetch(LOOKUP, owners, models, keys))
        found = {row["n"] - 1: json.loads(row["response_body"]) for row in rows}
        return [found.get(first[w]) for w in wanted]

    async def release(self) -> None:
        """Give back the held connections."""
        await self._reads.release()
        await self._writes.release()

    async def nearest(
        self, owner: str, model: str, context: bytes, embedding: list[float], limit: int
    ) -> list[Candidate]:
        """The ``limit`` nearest cached prompts of this key, model and context."""
        params = {
            "owner": owner,
            "model": model,
            "context": context,
            "embedding": vector_literal(embedding),
            "limit": limit,
        }
        query = text(_nearest_sql(len(embedding))).columns(response_body=JSONB)
        if self.iterative_scan and self.direct is not None:
            # Behind a transaction-mode pooler the next statement may run in another session:
            # the setting and the scan in one transaction.
            transactional = self.engine.execution_options(isolation_level="READ COMMITTED")
            async with transactional.begin() as conn:
                await conn.execute(ITERATIVE_SCAN_LOCAL)
                rows = (await conn.execute(query, params)).all()
        else:
            async with self.engine.connect() as conn:
                if self.iterative_scan:
                    # Session-wide on the pooled connection (the engine autocommits, so there
                    # is no transaction for SET LOCAL); it changes nothing but HNSW scans.
                    await conn.execute(ITERATIVE_SCAN)
                rows = (await conn.execute(query, params)).all()
        found = [Candidate(r.key, r.prompt, r.response_body, float(r.similarity)) for r in rows]
        # A relaxed-order scan may return them slightly out of order.
        return sorted(found, key=lambda c: c.similarity, reverse=True)

    async def bump(self, owner: str, model: str, key: bytes) -> None:
        """Count a semantic hit on an entry."""
        async with self.engine.begin() as conn:
            await conn.execute(BUMP, {"owner": owner, "model": model, "key": key})

    async def put_many(self, entries: list[Entry]) -> None:
        """Store answers (one statement per kind; the last of a repeated key wins).
        Entries of revoked keys are dropped."""
        latest = {(e.owner, e.model, e.key): e for e in entries}
        for semantic in (False, True):
            group = [e for e in latest.values() if (e.embedding is not None) == semantic]
            if not group:
                continue
            args = (
                [e.owner for e in group],
                [e.model for e in group],
                [e.key for e in group],
                [e.endpoint for e in group],
                [e.context for e in group],
                [e.prompt for e in group],
                [dumps(e.response_body) for e in group],
                [e.ttl_s for e in group],
                [vector_literal(e.embedding) if e.embedding else None for e in group],
            )
            sql = PUT[semantic]
            await self._writes.run(lambda conn: conn.execute(sql, *args))  # noqa: B023

    async def record_hits(self, rows: list[HitRow]) -> None:
        """Insert the final rows of calls answered from the cache (one statement)."""
        params: dict[str, list[Any]] = {
            **new_request_arrays(rows),
            "response_bodies": [dumps(r.response_body) for r in rows],
            "input_tokens": [r.input_tokens for r in rows],
            "output_tokens": [r.output_tokens for r in rows],
            "total_tokens": [r.total_tokens for r in rows],
            "cached_tokens": [r.cached_tokens for r in rows],
            "reasoning_tokens": [r.reasoning_tokens for r in rows],
            "usage_estimated": [r.usage_estimated for r in rows],
            "costs": [r.cost_usd for r in rows],
            "caches": [str(r.cache) for r in rows],
            "ats": [r.at for r in rows],
        }
        async with self.engine.begin() as conn:
            await conn.execute(RECORD_HITS, params)

    async def clear(self, model: str | None = None, key: str | None = None) -> int:
        """Delete entries (of one model, of the keys with this name or id); how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(CLEAR, {"model": model, "key_name": key})
        return result.rowcount or 0

    async def prune_chunk(self, chunk: int) -> int:
        """Delete up to ``chunk`` expired entries; how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(PRUNE, {"chunk": chunk})
        return result.rowcount or 0
