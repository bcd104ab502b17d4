"""One upstream attempt at a request or a batch line, classified: an outcome, or a retry.

Retryable upstream failures (429, 5xx, timeouts, dropped connections) ask for a retry after a
backoff that honours ``Retry-After``. Other 4xx are final; so is the last of ``max_attempts``
(``failed``), and a failure whose retry would start after the window (``expired``). The
callers (``flex.py`` for single requests, ``batches.py`` for lines) store the outcome with
writes guarded by status and by the attempt number, so a late or duplicate worker cannot
overwrite a cancel or a result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.cache.canonical import storable
from app.cache.service import BYPASSED, Lookup, ResponseCache, cache_of, hit_answer
from app.calls.pricing import PriceBook
from app.metrics import Metrics
from app.openai.usage import measured
from app.settings import ModelConfig, Settings
from app.store.outcomes import Outcome
from app.upstream.client import UpstreamClient, UpstreamError
from app.upstream.deployment import Deployment
from app.upstream.router import NoCapacity, Router
from app.vocabulary import CacheResult, ErrorCode, PriceTier, Status, error
from worker.fair_gate import FairGate
from worker.streaming import EventWriter, stream_call

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
    return float(max(delay, retry_after_s or 0.0))


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended: a final ``outcome``, or a retry in ``retry_in_s``.

    ``deployment`` names the deployment that was called (the retry prefers another);
    ``counted`` is False when no call was made because no deployment could take it (that
    wait does not use up one of ``max_attempts``).
    """

    outcome: Outcome | None = None
    retry_in_s: float | None = None
    error: dict[str, Any] | None = None
    deployment: str | None = None
    counted: bool = True


# How long a deferred attempt waits for a deployment with room before going back to the queue.
DEFERRED_ROUTE_WAIT_S = 30.0

EXPIRED = Outcome(status=Status.EXPIRED, error=error(ErrorCode.REQUEST_EXPIRED))
FREE = Decimal(0)


class RequestRunner:
    """Makes upstream attempts under per-model caps; one instance per worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        upstream: UpstreamClient,
        router: Router,
        metrics: Metrics | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        # Identical cacheable calls in flight in this process: the first one's outcome
        # answers the others (a batch of repeated lines calls the upstream once per prompt).
        self._flights: dict[tuple[str, str, bytes], asyncio.Future[Outcome | None]] = {}
        self.upstream = upstream
        self.router = router
        self.prices = PriceBook(settings)
        self.metrics = metrics
        # Per-model cap on concurrent upstream calls from this worker process, shared fairly
        # between keys (fair_gate.py); ``weights`` holds the keys whose weight is not 1.
        self._slots = {
            name: FairGate(model.flex_concurrency) for name, model in settings.models.items()
        }
        self.weights: dict[str, float] = {}

    async def attempt(
        self,
        model_name: str,
        endpoint: str,
        body: dict[str, Any],
        attempt: int,
        expires_at: dt.datetime,
        *,
        expired: Outcome | None = None,
        stop: asyncio.Event | None = None,
        stopped: Outcome | None = None,
        pin: str | None = None,
        last: str | None = None,
        tier: str = PriceTier.FLEX,
        key: str = "",
        events: EventWriter | None = None,
        owner: str = "",
        cached: bool = False,
    ) -> Attempt:
        """One upstream call under the model's cap, classified: an outcome, or a retry.

        Waiting for a slot can take a while: if the window passed meanwhile the call is not
        made (``expired``), nor if ``stop`` was set (``stopped``, e.g. a batch cancel). The
        call goes to ``pin`` if set, else preferably not to ``last`` (the deployment that
        failed the previous attempt), falling back to other models as the config says.
        A completed call carries its usage (estimated if the upstream reported none) and its
        cost at pricing ``tier``; both are counted in the metrics under ``key``'s name. The
        model's slots are shared fairly between keys (by name, weighted by ``weights``).
        With ``events``, the call streams and its events are stored as they come
        (``streaming.py``). ``cached``: the call may be answered from ``owner``'s response
        cache (or an identical call in flight here), and its answer is remembered.
        """
        model = self.settings.models.get(model_name)
        if model is None:
            return Attempt(
                Outcome(
                    status=Status.FAILED,
                    error={
                        "code": ErrorCode.MODEL_NOT_CONFIGURED,
                        "message": f"The model '{model_name}' is no longer configured.",
                    },
                )
            )
        lookup: Lookup | None = None
        if self.cache is not None and cache_of(model) is not None:
            if not cached:
                lookup = BYPASSED
            elif events is not None:  # a stream was looked up at the gateway: remember only
                lookup = Lookup(CacheResult.MISS, self.cache.key_of(endpoint, body, model))
            else:
                lookup = await self.cache.lookup(endpoint, body, model, owner)
                if tier == PriceTier.BATCH:  # single calls were counted at the gateway
                    self.cache.count(model.name, lookup.result)
                if not lookup.hit and lookup.key is not None:
                    lookup = await self._follow(owner, model, endpoint, body, lookup) or lookup
                if lookup.hit:
                    return Attempt(self._hit(model, endpoint, body, lookup, tier, key))
        run = functools.partial(
            self._attempt,
            model,
            endpoint,
            body,
            attempt,
            expires_at,
            expired=expired,
            stop=stop,
            stopped=stopped,
            pin=pin,
            last=last,
            tier=tier,
            key=key,
            events=events,
            cache=lookup.result if lookup is not None else None,
        )
        if lookup is None or lookup.key is None or lookup.hit:
            return await run()
        flight = (owner, model.name, lookup.key.exact)
        leader = asyncio.get_running_loop().create_future()
        self._flights.setdefault(flight, leader)
        result: Attempt | None = None
        try:
            result = await run()
        finally:
            if self._flights.get(flight) is leader:
                del self._flights[flight]
            leader.set_result(result.outcome if result is not None else None)
        if result.outcome is not None and result.outcome.status == Status.COMPLETED:
            assert self.cache is not None
            self.cache.remember(
                lookup,
                owner=owner,
                model=model,
                endpoint=endpoint,
                request=body,
                answer=result.outcome.response_body,
            )
        return result

    async def _follow(
        self,
        owner: str,
        model: ModelConfig,
        endpoint: str,
        body: dict[str, Any],
        lookup: Lookup,
    ) -> Lookup | None:
        """A hit from an identical call in flight in this process, once it has ended with
        an answer the cache would keep (not a sample among several, not truncated)."""
        assert lookup.key is not None
        leader = self._flights.get((owner, model.name, lookup.key.exact))
        if leader is None:
            return None
        outcome = await asyncio.shield(leader)
        if outcome is None or outcome.status != Status.COMPLETED:
            return None
        if not storable(endpoint, body, outcome.response_body):
            return None
        return Lookup(CacheResult.HIT, lookup.key, outcome.response_body)

    def _hit(
        self,
        model: ModelConfig,
        endpoint: str,
        request: dict[str, Any],
        lookup: Lookup,
        tier: str,
        key: str,
    ) -> Outcome:
        """A cached answer as this call's outcome: its input tokens cached, its cost 0."""
        answer, usage = hit_answer(endpoint, request, lookup.answer, dt.datetime.now(dt.UTC))
        if self.metrics is not None:
            self.metrics.observe_usage(model.name, tier, key, usage, FREE)
        return Outcome(
            status=Status.COMPLETED,
            response_status=200,
            response_body=answer,
            usage=usage,
            cost_usd=FREE,
            cache=lookup.result,
        )

    async def _attempt(
        self,
        model: ModelConfig,
        endpoint: str,
        body: dict[str, Any],
        attempt: int,
        expires_at: dt.datetime,
        *,
        expired: Outcome | None,
        stop: asyncio.Event | None,
        stopped: Outcome | None,
        pin: str | None,
        last: str | None,
        tier: str,
        key: str,
        events: EventWriter | None,
        cache: CacheResult | None,
    ) -> Attempt:
        """``attempt``'s upstream call, once the cache had no answer."""
        async with self._slots[model.name].slot(key, self.weights.get(key, 1.0)):
            if stop is not None and stop.is_set() and stopped is not None:
                return Attempt(stopped)
            if dt.datetime.now(dt.UTC) >= expires_at:
                return Attempt(expired or EXPIRED)
            deployment = await self._deployment(model, pin, last)
            if isinstance(deployment, Attempt):
                return deployment
            served = deployment.label(model.name)
            request = body
            try:
                if events is None:
                    reply = await self.upstream.call(deployment, endpoint, body)
                else:
                    reply = await stream_call(self.upstream, deployment, endpoint, body, events)
            except UpstreamError as exc:
                self._ended(deployment, exc)
                failure = self._after_failure(exc, attempt, model.max_attempts, expires_at, expired)
                return dataclasses.replace(
                    failure,
                    deployment=served,
                    outcome=failure.outcome
                    and dataclasses.replace(failure.outcome, deployment=served),
                )
            except BaseException:
                self.router.end(deployment, telling=False, realtime=False)
                raise
            self.router.end(deployment, realtime=False)
        body, text = reply.body, reply.text
        if deployment.model is not model and isinstance(body, dict) and "model" in body:
            body, text = {**body, "model": model.name}, ""  # a fallback answers as asked
        usage = measured(request, body)
        cost = self.prices.cost(model.name, served, tier, usage)
        if self.metrics is not None:
            self.metrics.observe_usage(model.name, tier, key, usage, cost)
        return Attempt(
            Outcome(
                status=Status.COMPLETED,
                response_status=reply.status,
                response_body=body,
                usage=usage,
                cost_usd=cost,
                response_text=text or None,
                deployment=served,
                cache=cache,
            ),
            deployment=served,
        )

    async def _deployment(
        self, model: ModelConfig, pin: str | None, last: str | None
    ) -> Deployment | Attempt:
        """The deployment to call, begun; or, when none can take a call for a while, a
        retry that does not count as an attempt (deferred work is never refused for this)."""
        avoid = self.router.by_label(model.name, last)
        chosen = self.router.pick(
            model.name, pin=pin, avoid=[avoid] if avoid else [], realtime=False
        )
        if chosen is not None:
            self.router.begin(chosen, realtime=False)
            return chosen
        try:
            # Waiting here (the model's slot held) picks up room the moment it frees.
            wait_s = max(model.route_timeout_s, DEFERRED_ROUTE_WAIT_S)
            found = await self.router.acquire(
                model.name, pin=pin, deadline=self.router.clock() + wait_s, realtime=False
            )
        except NoCapacity as exc:
            return Attempt(
                retry_in_s=exc.retry_after_s, error=error(ErrorCode.NO_CAPACITY), counted=False
            )
        assert found is not None  # nothing was tried yet
        return found

    def _ended(self, deployment: Deployment, exc: UpstreamError) -> None:
        """Tell the router how the deployment did: a 429 rests it, other retryable
        failures count against it, a client error says nothing against it."""
        if exc.status == 429:
            self.router.end(deployment, rest_s=exc.retry_after_s or 1.0, realtime=False)
        elif exc.retryable:
            self.router.end(deployment, fault=exc.code, realtime=False)
        else:
            self.router.end(deployment, realtime=False)

    def _after_failure(
        self,
        exc: UpstreamError,
        attempt: int,
        max_attempts: int,
        expires_at: dt.datetime,
        expired: Outcome | None,
    ) -> Attempt:
        """A retry if one is allowed and would start inside the window; else the end."""
        if not exc.retryable:
            return Attempt(_failed(exc, exc.message))
        if attempt >= max_attempts:
            return Attempt(_failed(exc, f"{exc.message} (gave up after {attempt} attempts)"))
        limits = self.settings.limits
        delay = backoff_s(attempt, exc.retry_after_s, limits.retry_base_s, limits.retry_max_s)
        if dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay) < expires_at:
            return Attempt(retry_in_s=delay, error=exc.as_error())
        # Retrying would start after the window: the request expires now, saying why.
        template = expired or EXPIRED
        assert template.error is not None
        source = "Retry-After" if delay == exc.retry_after_s else "backoff"
        return Attempt(
            Outcome(
                status=Status.EXPIRED,
                error={
                    "code": template.error["code"],
                    "message": f"Not retried: the next attempt would start in {delay:.0f} s"
                    f" ({source}), after the window ends. Last error: {exc}",
                },
            )
        )


def _failed(exc: UpstreamError, message: str) -> Outcome:
    """A final failure: the provider's status and body, if it answered, and the reason."""
    return Outcome(
        status=Status.FAILED,
        response_status=exc.status,
        response_body=exc.body,
        error={"code": exc.code, "message": message},
    )
