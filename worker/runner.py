"""Run a procrastinate worker with tiergate's tasks (``tiergate worker`` or inside ``serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from procrastinate.manager import JobManager
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cache.embedder import Embedder
from app.cache.service import ResponseCache
from app.calls.conversations import Conversations
from app.metrics import Metrics
from app.settings import Settings
from app.store.batches import BatchStore
from app.store.cache import CacheStore
from app.store.conversations import ConversationStore
from app.store.db import create_engine, database_unavailable
from app.store.dburl import DatabaseURL
from app.store.files import FileStore
from app.store.keys import KeyStore
from app.store.limits import LimitStore
from app.store.listener import require_notifications
from app.store.orphans import OrphanStore
from app.store.presence import Presence
from app.store.queue_depth import QueueDepthStore
from app.store.requests import RequestStore
from app.store.retention import RetentionStore
from app.store.sweeps import RequestSweeps
from app.store.upstream_jobs import UpstreamJobStore
from app.store.webhooks import WebhookStore
from app.upstream.client import build_upstream
from app.upstream.engine_reader import EngineReader
from app.upstream.router import Router
from app.vocabulary import Channel, ProcessKind
from worker.app import build_job_app
from worker.batches import BatchJobs
from worker.execute import RequestRunner
from worker.executors.batch_poller import BatchPoller
from worker.flex import FlexDispatcher
from worker.maintenance import Maintenance
from worker.pacing import Pacer
from worker.webhooks import WebhookDeliverer

log = logging.getLogger("tiergate.worker")

RESTART_MIN_S = 0.5
RESTART_MAX_S = 10.0


async def run_worker(
    settings: Settings,
    url: DatabaseURL,
    *,
    concurrency: int | None = None,
    router: Router | None = None,
    metrics: Metrics | None = None,
    cache: ResponseCache | None = None,
) -> None:
    """Work until cancelled. Cancellation stops gracefully (running jobs get 10 s).

    ``router``, ``metrics`` and ``cache`` are the gateway's when the worker runs inside it
    (one view of the fleet, one count of calls in flight per process, one /metrics, one
    response cache with its in-flight calls).

    procrastinate's worker stops itself when its LISTEN connection fails (a database
    restart); it is started again here, with a growing delay, as long as nobody cancelled us.
    """
    concurrency = concurrency or settings.limits.worker_concurrency
    engine = create_engine(
        url,
        # A steady pool: overflow connections would be opened and closed per job.
        pool_size=min(concurrency, 10),
        max_overflow=0,
        application_name="tiergate-worker",
    )
    upstream = build_upstream(settings)
    own_router = router is None
    router = router or Router(settings)
    if own_router and metrics is not None:
        metrics.watch_deployments(router.snapshot)
    own_cache = cache is None
    cache = cache or ResponseCache(
        settings, CacheStore(engine, url.direct), Embedder(upstream, router), metrics
    )
    jobs = UpstreamJobStore(engine)
    runner = RequestRunner(
        settings=settings,
        upstream=upstream,
        router=router,
        metrics=metrics,
        cache=cache,
        jobs=jobs,
    )
    pacer = Pacer(LimitStore(engine))  # flex and batch work of limited keys, at their rate
    batch_jobs = BatchJobs(
        settings=settings,
        pacer=pacer,
        batches=BatchStore(engine),
        files=FileStore(engine),
        keys=KeyStore(engine),
        runner=runner,
        conversations=Conversations(ConversationStore(engine)),
    )
    job_app = build_job_app(url, settings, batch_jobs=batch_jobs)
    maintenance = maintenance_for(engine, settings, metrics)
    presence = Presence(
        engine,
        kind=ProcessKind.WORKER,
        every_s=settings.limits.heartbeat_s,
        # Inside a gateway, the gateway's presence already publishes the shared router.
        report=router.snapshot if own_router else None,
        learn=router.learn if own_router else None,
    )
    assert runner.batch is not None
    runner.batch.owner = presence.id  # the provider jobs it submits are this process's
    poller = BatchPoller(
        settings=settings,
        store=jobs,
        executor=runner.batch,
        router=router,
        meter=runner.meter,
        cache=cache,
    )
    await _when_database_up(lambda: require_notifications(url), "check LISTEN/NOTIFY")
    # Rows this worker claims name it: it must be registered first, or the sweep would take
    # them for a dead worker's.
    await _when_database_up(presence.start, "register")
    if own_cache:
        await cache.start()
    deliverer = WebhookDeliverer(settings.webhooks, WebhookStore(engine))
    flex = FlexDispatcher(
        settings=settings,
        url=url,
        store=RequestStore(engine),
        runner=runner,
        worker_id=presence.id,
        pacer=pacer,
        # The webhook deliverer is woken through the dispatcher's LISTEN connection.
        also={Channel.WEBHOOKS: deliverer.wake},
    )
    flex_task = asyncio.create_task(flex.run(), name="flex-dispatcher")
    webhooks_task = asyncio.create_task(deliverer.run(), name="webhook-deliveries")
    poller_task = asyncio.create_task(poller.run(), name="batch-poller")
    # One reader of each engine deployment's metrics per process (the gateway's router, when
    # inside it, is read here too: realtime calls never wait on it).
    engines_task = asyncio.create_task(EngineReader(router).run(), name="engine-metrics")
    weights_task = asyncio.create_task(
        _refresh_weights(runner, KeyStore(engine), settings.limits.heartbeat_s), name="key-weights"
    )
    batch_jobs.start()
    log.info("worker %s starting (concurrency %d)", presence.id, concurrency)
    delay = RESTART_MIN_S
    try:
        while True:
            started = time.monotonic()
            try:
                async with job_app.open_async():
                    # A plain manager: the rescue reads a refusal as "rescued elsewhere first",
                    # where the worker's own manager logs it as a lost outcome.
                    rescuer = asyncio.create_task(
                        maintenance.run(JobManager(job_app.connector)), name="maintenance"
                    )
                    try:
                        await job_app.run_worker_async(
                            concurrency=concurrency,
                            install_signal_handlers=False,
                            fetch_job_polling_interval=2.0,
                            update_heartbeat_interval=settings.limits.heartbeat_s,
                            shutdown_graceful_timeout=10.0,
                        )
                    finally:
                        rescuer.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await rescuer
                reason = "its database connection failed"
            except Exception as exc:
                # procrastinate's ConnectorException says only "Database error.": the cause too.
                cause = exc.__cause__
                reason = f"{type(exc).__name__}: {str(exc).strip()}"
                if cause is not None:
                    reason += f" {type(cause).__name__}: {cause}"
            if time.monotonic() - started > RESTART_MAX_S:
                delay = RESTART_MIN_S
            log.warning("worker stopped (%s); restarting in %.1fs", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)
    finally:
        for task in (flex_task, webhooks_task, poller_task, weights_task, engines_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.batch.stop()
        await batch_jobs.stop()
        if own_cache:
            await cache.stop()
        await presence.stop()
        await upstream.aclose()
        await engine.dispose()


async def _when_database_up(step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``step``, waiting for the database (retrying with backoff) if it is not up yet."""
    delay = RESTART_MIN_S
    while True:
        try:
            await step()
            return
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("worker cannot %s yet (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)


async def _refresh_weights(runner: RequestRunner, keys: KeyStore, every_s: float) -> None:
    """Keep the runner's view of the keys' fair-share weights at most ``every_s`` old."""
    while True:
        try:
            runner.weights = await keys.weights()
        except Exception as exc:  # the database is down: keep the last weights
            log.debug("key weights not refreshed: %s", exc)
        await asyncio.sleep(every_s)


def maintenance_for(
    engine: AsyncEngine, settings: Settings, metrics: Metrics | None = None
) -> Maintenance:
    """The rescue and sweep of one worker process, on its engine."""
    return Maintenance(
        limits=settings.limits,
        requests=RequestSweeps(engine),
        batches=BatchStore(engine),
        files=FileStore(engine),
        orphans=OrphanStore(engine),
        retention=RetentionStore(engine, settings.limits.retention),
        queue_depth=QueueDepthStore(engine),
        cache=CacheStore(engine),
        metrics=metrics,
    )
