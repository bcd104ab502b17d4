"""Everything a gateway process shares: built from settings, started in the lifespan."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from app.cache.embedder import Embedder
from app.cache.service import ResponseCache
from app.calls.conversations import Conversations
from app.calls.limits import Budgets, RateLimiter
from app.calls.pricing import PriceBook
from app.gateway.bodies import ByteBudget
from app.gateway.cached import CachedAnswers
from app.gateway.deferred import DeferredCalls
from app.gateway.follow import EventStreams
from app.gateway.inference import InferenceHandler
from app.gateway.middleware.auth import KeyCache
from app.gateway.queue_depth import QueueDepth
from app.gateway.realtime import RealtimeProxy
from app.gateway.waiters import WaiterHub
from app.metrics import Metrics
from app.settings import Settings
from app.store.batches import BatchStore
from app.store.cache import CacheStore
from app.store.chat_completions import ChatCompletionStore
from app.store.conversations import ConversationStore
from app.store.db import create_engine
from app.store.dburl import DatabaseURL
from app.store.events import EventStore
from app.store.files import FileStore
from app.store.keys import KeyStore
from app.store.limits import LimitStore
from app.store.listener import require_notifications
from app.store.presence import Presence
from app.store.realtime import RealtimeTracker
from app.store.requests import RequestStore
from app.upstream.client import build_upstream
from app.upstream.router import Router
from app.vocabulary import ProcessKind

# The first /metrics of a process waits this long at most for the queue's count.
QUEUE_DEPTH_TIMEOUT_S = 2.0

log = logging.getLogger("tiergate")


class Services:
    """The gateway's shared resources, handed to middleware and routes explicitly."""

    def __init__(self, settings: Settings, url: DatabaseURL) -> None:
        self.settings = settings
        self.url = url
        limits = settings.limits
        self.engine: AsyncEngine = create_engine(
            url, pool_size=limits.db_pool_size, max_overflow=limits.db_max_overflow
        )
        self.metrics = Metrics()
        self.prices = PriceBook(settings)
        self.keys = KeyStore(self.engine)
        self.key_cache = KeyCache(self.keys)
        limit_store = LimitStore(self.engine)
        self.rate_limiter = RateLimiter(limit_store)
        self.budgets = Budgets(limit_store)
        self.requests = RequestStore(self.engine, retention_days=limits.retention.requests_days)
        self.chat_completions = ChatCompletionStore(
            self.engine, retention_days=limits.retention.requests_days
        )
        self.files = FileStore(self.engine)
        self.batches = BatchStore(self.engine)
        self.upstream = build_upstream(settings)
        self.router = Router(settings)  # shared with an in-process worker
        self.metrics.watch_deployments(self.router.snapshot)
        self.hub = WaiterHub(
            url,
            final_among=self.requests.final_among,
            on_key_revoked=self._key_changed,
            recheck_s=limits.waiter_recheck_s,
        )
        self.presence = Presence(
            self.engine,
            kind=ProcessKind.GATEWAY,
            every_s=limits.heartbeat_s,
            report=self.router.snapshot,
            learn=self.router.learn,
        )
        self.cache = ResponseCache(
            settings,
            CacheStore(self.engine, url.direct),
            Embedder(self.upstream, self.router),
            self.metrics,
        )
        self.cached = CachedAnswers(self.cache, self.metrics, settle=self.rate_limiter.settle)
        self.proxy = RealtimeProxy(
            cache=self.cache,
            store=RealtimeTracker(self.engine),
            upstream=self.upstream,
            router=self.router,
            metrics=self.metrics,
            prices=self.prices,
            gateway_id=self.presence.id,
            settle=self.rate_limiter.settle,
            row_after_s=limits.realtime_row_after_s,
        )
        self.events = EventStore(self.engine)
        self.streams = EventStreams(
            events=self.events,
            requests=self.requests,
            hub=self.hub,
            keepalive_s=limits.stream_keepalive_s,
        )
        self.deferred = DeferredCalls(
            settings=settings,
            store=self.requests,
            hub=self.hub,
            metrics=self.metrics,
            streams=self.streams,
        )
        self.conversations = Conversations(ConversationStore(self.engine))
        self.inference = InferenceHandler(
            settings=settings,
            proxy=self.proxy,
            deferred=self.deferred,
            conversations=self.conversations,
            limiter=self.rate_limiter,
            budgets=self.budgets,
            cache=self.cache,
            cached=self.cached,
        )
        self.queue_depth = QueueDepth(
            self.engine,
            max_age_s=limits.metrics_max_age_s,
            timeout_s=QUEUE_DEPTH_TIMEOUT_S,
            fresh_s=3 * limits.heartbeat_s,  # silent for three beats: gone (as the dashboard)
        )
        self.body_budget = ByteBudget(limits.inflight_body_bytes, wait_s=limits.body_wait_s)
        self.metrics.large_body_bytes.set_function(lambda: self.body_budget.in_use)
        self.metrics.large_bodies_waiting.set_function(lambda: self.body_budget.waiting)

    def _key_changed(self, key_id: str) -> None:
        """A key was revoked or updated (limits, budget, models): read it again."""
        self.key_cache.revoke(key_id)
        self.budgets.forget(key_id)

    async def start(self) -> None:
        await require_notifications(self.url)  # a gateway without them cannot answer
        await self.presence.start()
        self.proxy.start()
        self.deferred.start()
        await self.cache.start()
        await self.hub.start()

    async def stop(self) -> None:
        await self.queue_depth.stop()
        await self.hub.stop()
        await self.deferred.stop()
        await self.proxy.stop()
        await self.cache.stop()
        await self.presence.stop()
        await self.upstream.aclose()
        await self.engine.dispose()
