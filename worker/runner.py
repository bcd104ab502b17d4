"""Run a procrastinate worker with tiergate's tasks (``tiergate worker`` or inside ``serve``)."""

from __future__ import annotations

import logging

from app.dburl import DatabaseURL
from app.settings import Settings
from app.store.db import create_engine
from app.store.requests import RequestStore
from app.upstream import build_upstream
from worker.app import build_job_app
from worker.execute import RequestRunner

log = logging.getLogger("tiergate.worker")


async def run_worker(
    settings: Settings,
    url: DatabaseURL,
    *,
    concurrency: int | None = None,
    name: str | None = None,
    install_signal_handlers: bool = False,
) -> None:
    """Work until cancelled (or until a signal, when ``install_signal_handlers``)."""
    concurrency = concurrency or settings.limits.worker_concurrency
    engine = create_engine(
        url,
        # A steady pool: overflow connections would be opened and closed per job.
        pool_size=min(concurrency, 10),
        max_overflow=0,
        application_name="tiergate-worker",
    )
    upstream = build_upstream(settings)
    store = RequestStore(engine)
    runner = RequestRunner(settings=settings, store=store, upstream=upstream)
    job_app = build_job_app(url, settings, runner=runner, store=store)
    log.info("worker starting (concurrency %d)", concurrency)
    try:
        async with job_app.open_async():
            await job_app.run_worker_async(
                concurrency=concurrency,
                name=name,
                install_signal_handlers=install_signal_handlers,
                fetch_job_polling_interval=2.0,
                update_heartbeat_interval=settings.limits.heartbeat_s,
                shutdown_graceful_timeout=10.0,
            )
    finally:
        await upstream.aclose()
        await engine.dispose()
