"""Run one deferred request: claim its row, call the upstream, store the outcome.

Retryable upstream failures (429, 5xx, timeouts, dropped connections) put the row back to
``pending`` and raise ``RetryLater``; the job is rescheduled by procrastinate after a backoff
that honours ``Retry-After``. Other 4xx are final. Every write is guarded by status and by
the attempt number, so a late or duplicate worker cannot overwrite a cancel or a result.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from dataclasses import dataclass

from app.settings import Settings
from app.store.requests import Outcome, RequestStore
from app.upstream import UpstreamClient, UpstreamError
from app.usage import usage_of

log = logging.getLogger("tiergate.worker")


@dataclass
class RetryLater(Exception):
    """Reschedule this job in ``delay_s`` seconds."""

    delay_s: float
    reason: str

    def __str__(self) -> str:
        return f"retry in {self.delay_s:.1f}s: {self.reason}"


def backoff_s(attempt: int, retry_after_s: float | None, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter, never shorter than the provider's ``Retry-After``."""
    delay = min(max_s, base_s * 2 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)
    return max(delay, retry_after_s or 0.0)


class RequestRunner:
    """Executes request rows; one instance per worker process."""

    def __init__(
        self, *, settings: Settings, store: RequestStore, upstream: UpstreamClient
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        # Per-model cap on concurrent upstream calls from this worker process.
        self._slots = {
            name: asyncio.Semaphore(model.flex_concurrency)
            for name, model in settings.models.items()
        }

    async def run(self, request_id: str) -> None:
        row = await self.store.claim(request_id)
        if row is None:
            log.info("request %s is final or gone; nothing to do", request_id)
            return
        attempt = row["attempts"]
        if row["expired"]:
            await self.store.finish(
                request_id,
                attempt,
                Outcome(
                    status="expired",
                    error={
                        "code": "request_expired",
                        "message": "The request was not processed within its window.",
                    },
                ),
            )
            return
        model = self.settings.models.get(row["model"])
        if model is None:
            await self.store.finish(
                request_id,
                attempt,
                Outcome(
                    status="failed",
                    error={
                        "code": "model_not_configured",
                        "message": f"The model '{row['model']}' is no longer configured.",
                    },
                ),
            )
            return
        async with self._slots[model.name]:
            try:
                reply = await self.upstream.call(model, row["endpoint"], row["body"])
            except UpstreamError as exc:
                await self._failed(request_id, attempt, row["expires_at"], model.max_attempts, exc)
                return
        given, produced, total = usage_of(reply.body)
        await self.store.finish(
            request_id,
            attempt,
            Outcome(
                status="completed",
                response_status=reply.status,
                response_body=reply.body,
                input_tokens=given,
                output_tokens=produced,
                total_tokens=total,
            ),
        )

    async def _failed(
        self,
        request_id: str,
        attempt: int,
        expires_at: dt.datetime,
        max_attempts: int,
        exc: UpstreamError,
    ) -> None:
        limits = self.settings.limits
        delay = backoff_s(attempt, exc.retry_after_s, limits.retry_base_s, limits.retry_max_s)
        retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        if exc.retryable and attempt < max_attempts and retry_at < expires_at:
            if await self.store.requeue(request_id, attempt, exc.as_error()):
                log.info(
                    "request %s attempt %d failed (%s); retry in %.1fs",
                    request_id,
                    attempt,
                    exc.code,
                    delay,
                )
                raise RetryLater(delay, exc.code) from exc
            return
        log.info("request %s failed for good after %d attempt(s): %s", request_id, attempt, exc)
        await self.store.finish(
            request_id,
            attempt,
            Outcome(
                status="failed",
                response_status=exc.status,
                response_body=exc.body,
                error=exc.as_error(),
            ),
        )
