"""The response cache as the gateway and the workers use it: look up, remember, record hits.

A lookup tries the exact entry first (one grouped statement), then, for a model with a
semantic cache, embeds the prompt and verifies the nearest entries of the same key, model
and context (``verify.py``). Every failure (database, embeddings model) is logged and is a
miss: the cache can make a call cheaper, never fail it. Writes are queued and never awaited
by the answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from app.cache.canonical import RequestKey, request_key, storable
from app.cache.embedder import Embedder, EmbeddingFailed
from app.cache.verify import mismatch
from app.metrics import Metrics
from app.openai.usage import estimate_usage, usage_of
from app.settings import CacheConfig, ModelConfig, Settings
from app.store.cache import CacheStore, Entry, HitRow, Wanted
from app.store.db import database_unavailable
from app.store.group_commit import GroupCommit
from app.token_usage import TokenUsage
from app.vocabulary import CacheResult, Endpoint

log = logging.getLogger("tiergate.cache")

# Semantic candidates verified per lookup, nearest first.
CANDIDATES = 3
# A lookup that takes longer (a slow database) is abandoned: the call goes on as a miss.
LOOKUP_TIMEOUT_S = 0.5
# Longer prompts are cached exactly only: past most embedding models' input, and where a
# near-duplicate is least likely to mean the same.
SEMANTIC_MAX_CHARS = 8000


@dataclass(frozen=True)
class Lookup:
    """What the cache has for a call: an answer (a hit), or what to remember it by."""

    result: CacheResult
    key: RequestKey | None = None
    answer: Any = None  # the cached body (hits)
    embedding: list[float] | None = None  # the prompt's (semantic misses: stored with it)
    similarity: float | None = None

    @property
    def hit(self) -> bool:
        return self.result in (CacheResult.HIT, CacheResult.SEMANTIC_HIT)


BYPASSED = Lookup(CacheResult.BYPASS)


def cache_of(model: ModelConfig) -> CacheConfig | None:
    """The model's cache, if it has one turned on."""
    cache = model.cache
    return cache if cache is not None and cache.enabled else None


def skips(header: str | None, key_enabled: bool) -> bool:
    """Whether the client (``x-tiergate-cache: bypass``) or its key skips the cache."""
    return not key_enabled or (header is not None and header.strip().lower() == CacheResult.BYPASS)


class CacheSwitches(Protocol):
    """What a row says about its use of the cache."""

    @property
    def cache(self) -> str | None: ...

    @property
    def cache_enabled(self) -> bool | None: ...


def wanted_for(row: CacheSwitches) -> bool:
    """Whether a claimed row may use the cache: neither its client (the row says ``bypass``)
    nor its key (``cache_enabled`` false) turned it off."""
    return row.cache != CacheResult.BYPASS and row.cache_enabled is not False


def hit_answer(
    endpoint: str, request: dict[str, Any], cached: Any, now: dt.datetime
) -> tuple[Any, TokenUsage]:
    """A cached body as a new answer (created now, its input tokens counted as cached) and
    its usage: as the body reports it, else tiergate's estimate."""
    body = dict(cached) if isinstance(cached, dict) else cached
    if isinstance(body, dict):
        for stamp in ("created", "created_at"):
            if stamp in body:
                body[stamp] = int(now.timestamp())
        usage = body.get("usage")
        if isinstance(usage, dict):
            usage = dict(usage)
            if "input_tokens" in usage:
                details, count = "input_tokens_details", usage["input_tokens"]
            else:
                details, count = "prompt_tokens_details", usage.get("prompt_tokens")
            if endpoint != Endpoint.EMBEDDINGS:
                usage[details] = {**(usage.get(details) or {}), "cached_tokens": count}
            body["usage"] = usage
    found = usage_of(body)
    if found.known:
        return body, found
    guess = estimate_usage(request, body)
    return body, TokenUsage(guess.input, guess.output, guess.total, guess.input, estimated=True)


class ResponseCache:
    """One per process: grouped lookups and writes, the embeddings client, the hit rows."""

    def __init__(
        self,
        settings: Settings,
        store: CacheStore,
        embedder: Embedder,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.embedder = embedder
        self.semantic_ready = False
        fault = lambda exc: not database_unavailable(exc)  # noqa: E731
        self.lookups: GroupCommit[Wanted, Any] = GroupCommit(
            store.lookup_many, name="cache-lookup", item_may_be_at_fault=fault
        )
        self.writes: GroupCommit[Entry, None] = GroupCommit(
            store.put_many, name="cache-write", item_may_be_at_fault=fault
        )
        self.hits: GroupCommit[HitRow, None] = GroupCommit(
            store.record_hits, name="cache-hits", item_may_be_at_fault=fault
        )
        self._writing: set[asyncio.Future[None]] = set()
        self._indexed: set[int] = set()  # embedding sizes whose index was seen to

    def count(self, model: str, result: CacheResult) -> None:
        """Count what the cache did for a call (``tiergate_cache_total``)."""
        if self.metrics is not None:
            self.metrics.cache.labels(model, result).inc()

    async def start(self) -> None:
        """Start the grouped statements; check once whether semantic caching can work."""
        for group in (self.lookups, self.writes, self.hits):
            group.start()
        wanted = [m.name for m in self.settings.models.values() if m.cache and m.cache.semantic]
        if not wanted:
            return
        try:
            self.semantic_ready = await self.store.has_embeddings()
        except Exception as exc:
            log.warning("semantic cache is off: could not check for pgvector (%s)", exc)
            return
        if not self.semantic_ready:
            log.warning(
                "semantic cache is off for %s: the database has no pgvector ('vector'"
                " extension) at migration time; exact caching still works",
                ", ".join(wanted),
            )

    async def stop(self) -> None:
        if self._writing:
            await asyncio.wait(self._writing, timeout=5)
        for group in (self.lookups, self.writes, self.hits):
            await group.stop()
        await self.store.release()

    def key_of(self, endpoint: str, body: dict[str, Any], model: ModelConfig) -> RequestKey:
        """The cache identity of a call to ``model`` (whose cache is on)."""
        cache = cache_of(model)
        assert cache is not None
        return request_key(endpoint, body, frozenset(cache.ignore))

    async def lookup(
        self, endpoint: str, body: dict[str, Any], model: ModelConfig, owner: str
    ) -> Lookup:
        """The cached answer for this call, or a miss to remember it by (never raises)."""
        cache = cache_of(model)
        if cache is None:
            return BYPASSED
        key = request_key(endpoint, body, frozenset(cache.ignore))
        miss = Lookup(CacheResult.MISS, key)
        if cache.exact:
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                    found = await self.lookups.submit(Wanted(owner, model.name, key.exact))
            except Exception as exc:  # TimeoutError included
                log.warning("cache lookup failed, treated as a miss: %r", exc)
                return miss
            if found is not None:
                return Lookup(CacheResult.HIT, key, found)
        semantic = cache.semantic
        if (
            semantic is None
            or not self.semantic_ready
            or key.prompt is None
            or len(key.prompt) > SEMANTIC_MAX_CHARS
        ):
            return miss
        try:
            vector = await self.embedder.embed(
                semantic.embedding_model, key.prompt, semantic.timeout_s, semantic.dimensions
            )
        except EmbeddingFailed as exc:
            log.warning("semantic cache skipped, no embedding: %s", exc)
            return miss
        miss = Lookup(CacheResult.MISS, key, embedding=vector)
        if len(vector) not in self._indexed:
            self._indexed.add(len(vector))
            self._background(self._index(len(vector)))
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                candidates = await self.store.nearest(
                    owner, model.name, key.context, vector, CANDIDATES
                )
        except Exception as exc:
            log.warning("semantic cache lookup failed, treated as a miss: %r", exc)
            return miss
        for candidate in candidates:
            if candidate.similarity < semantic.min_similarity:
                break
            if candidate.prompt is None or mismatch(key.prompt, candidate.prompt) is not None:
                continue
            self._background(self.store.bump(owner, model.name, candidate.key))
            return Lookup(
                CacheResult.SEMANTIC_HIT,
                key,
                candidate.response_body,
                similarity=candidate.similarity,
            )
        return miss

    async def _index(self, dims: int) -> None:
        """The HNSW index of this embedding size, built by the first process to need it."""
        if await self.store.ensure_index(dims):
            log.info("semantic cache: built the HNSW index of %d-dimension embeddings", dims)

    def remember(
        self,
        lookup: Lookup,
        *,
        owner: str,
        model: ModelConfig,
        endpoint: str,
        request: dict[str, Any],
        answer: Any,
    ) -> None:
        """Store a missed call's answer if it may be (queued: the caller never waits)."""
        cache = cache_of(model)
        key = lookup.key
        if cache is None or key is None or lookup.result != CacheResult.MISS:
            return
        if not storable(endpoint, request, answer):
            return
        entry = Entry(
            owner=owner,
            model=model.name,
            key=key.exact,
            endpoint=endpoint,
            context=key.context,
            prompt=key.prompt,
            response_body=answer,
            ttl_s=cache.ttl_s,
            embedding=lookup.embedding,
        )
        self._background(self.writes.submit(entry))

    async def record_hit(self, row: HitRow) -> None:
        """Insert the final row of a call answered from the cache (awaited: once the client
        has the answer, a GET by its id finds it)."""
        await self.hits.submit(row)

    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._writing.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Future[None]) -> None:
        self._writing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("cache work in the background failed: %s", exc)
