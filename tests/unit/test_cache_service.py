"""The cache never fails a call: a slow or broken store, or an embeddings model that fails,
is a miss; a semantic candidate is served only when verified."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.cache import service
from app.cache.embedder import EmbeddingFailed
from app.cache.service import ResponseCache
from app.settings import Settings
from app.store.cache import Candidate
from app.vocabulary import CacheResult

BODY = {"model": "m", "input": "How do I reverse a list in Python?"}


class FakeStore:
    def __init__(self, *, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.candidates: list[Candidate] = []

    async def lookup_many(self, wanted: list[Any]) -> list[Any]:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("database down")
        return [None for _ in wanted]

    async def nearest(self, *args: Any) -> list[Candidate]:
        return self.candidates

    async def bump(self, *args: Any) -> None:
        return None

    async def ensure_index(self, dims: int) -> bool:
        return False

    async def put_many(self, entries: list[Any]) -> None:
        return None

    async def record_hits(self, rows: list[Any]) -> None:
        return None

    async def release(self) -> None:
        return None


class FakeEmbedder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def embed(self, *args: Any) -> list[float]:
        if self.fail:
            raise EmbeddingFailed("embed: connection refused")
        return [1.0, 0.0]


def cache_for(store: FakeStore, embedder: FakeEmbedder, semantic: bool) -> ResponseCache:
    settings = Settings()
    config: dict[str, Any] = {"exact": True}
    if semantic:
        config["semantic"] = {"embedding_model": "embed", "min_similarity": 0.9}
    settings.apply_config(
        {
            "models": [
                {"name": "m", "upstream": "mock", "cache": config},
                {"name": "embed", "upstream": "mock", "endpoints": ["embeddings"]},
            ]
        }
    )
    cache = ResponseCache(settings, store, embedder)  # type: ignore[arg-type]
    cache.semantic_ready = semantic
    return cache


async def lookup(cache: ResponseCache, body: dict[str, Any] = BODY) -> Any:
    for group in (cache.lookups, cache.writes, cache.hits):
        group.start()
    try:
        return await cache.lookup("/v1/responses", body, cache.settings.models["m"], "key_1")
    finally:
        await cache.stop()


def test_a_slow_database_is_a_miss(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(service, "LOOKUP_TIMEOUT_S", 0.05)
    found = asyncio.run(lookup(cache_for(FakeStore(delay_s=5), FakeEmbedder(), False)))
    assert found.result == CacheResult.MISS and found.key is not None


def test_a_failing_database_is_a_miss():
    found = asyncio.run(lookup(cache_for(FakeStore(fail=True), FakeEmbedder(), False)))
    assert found.result == CacheResult.MISS


def test_a_failing_embeddings_model_is_a_miss():
    found = asyncio.run(lookup(cache_for(FakeStore(), FakeEmbedder(fail=True), True)))
    assert found.result == CacheResult.MISS and found.embedding is None


def test_a_semantic_candidate_is_served_only_when_verified():
    store = FakeStore()
    answer = {"output": [], "usage": None}
    store.candidates = [
        Candidate(b"1", "user: How do I reverse a list in Java?", answer, 0.99),
        Candidate(b"2", "user: How do I reverse a list in Python ?", answer, 0.95),
        Candidate(b"3", "user: How do I reverse a list in Python?", answer, 0.5),
    ]
    found = asyncio.run(lookup(cache_for(store, FakeEmbedder(), True)))
    assert found.result == CacheResult.SEMANTIC_HIT and found.similarity == 0.95
    store.candidates = [store.candidates[0], store.candidates[2]]  # wrong, then too far
    found = asyncio.run(lookup(cache_for(store, FakeEmbedder(), True)))
    assert found.result == CacheResult.MISS and found.embedding == [1.0, 0.0]


def test_a_long_prompt_is_cached_exactly_only():
    store = FakeStore()
    store.candidates = [Candidate(b"1", "user: x", {"output": []}, 1.0)]
    cache = cache_for(store, FakeEmbedder(), True)
    long_body = {"model": "m", "input": "word " * 2000}
    found = asyncio.run(lookup(cache, long_body))
    assert found.result == CacheResult.MISS and found.embedding is None
