"""One attempt at a claimed row: answered from the response cache, or handed to an executor.

Whatever runs the call (``worker/executors``), the cache comes first: a hit finishes the row at
once (no upstream call, cost 0), and an identical call already in flight in this process
answers the others when it ends. The executor of the row's deployment makes the call; its
answer is remembered by the cache. How failures are retried is the call core's policy
(``app/calls/policy.py``); the callers (``flex.py`` for single requests, ``batches.py`` for
lines) store the outcome with writes guarded by status and by the attempt number, so a late or
duplicate worker cannot overwrite a cancel or a result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.cache.canonical import storable
from app.cache.service import BYPASSED, Lookup, ResponseCache, cache_of, hit_answer
from app.calls.outcome import Meter
from app.calls.policy import Attempt
from app.calls.pricing import PriceBook
from app.metrics import Metrics
from app.settings import ModelConfig, Settings
from app.store.outcomes import Outcome
from app.store.upstream_jobs import UpstreamJobStore
from app.upstream.client import UpstreamClient
from app.upstream.router import Router
from app.vocabulary import CacheResult, ErrorCode, ExecutorKind, PriceTier, Status
from worker.executors import paths
from worker.executors.base import Executor, Work
from worker.executors.batch import BatchExecutor
from worker.executors.direct import DirectExecutor, FlexExecutor


@dataclass
class RetryLater(Exception):
    """Reschedule this job in ``delay_s`` seconds."""

    delay_s: float
    reason: str

    def __str__(self) -> str:
        return f"retry in {self.delay_s:.1f}s: {self.reason}"


FREE = Decimal(0)


class RequestRunner:
    """Runs attempts at claimed rows: the cache first, then the deployment's executor; one
    instance per worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        upstream: UpstreamClient,
        router: Router,
        metrics: Metrics | None = None,
        cache: ResponseCache | None = None,
        jobs: UpstreamJobStore | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        # Identical cacheable calls in flight in this process: the first one's outcome
        # answers the others (a batch of repeated lines calls the upstream once per prompt).
        self._flights: dict[tuple[str, str, bytes], asyncio.Future[Outcome | None]] = {}
        self.metrics = metrics
        self.meter = Meter(PriceBook(settings), metrics)
        self.direct = DirectExecutor(
            settings=settings, upstream=upstream, router=router, meter=self.meter
        )
        self.executors: dict[ExecutorKind, Executor] = {
            ExecutorKind.DIRECT: self.direct,
            ExecutorKind.FLEX: FlexExecutor(self.direct),
        }
        # Providers' Batch API jobs need the store of their rows (a worker process has it).
        self.batch: BatchExecutor | None = None
        if jobs is not None:
            self.batch = BatchExecutor(
                settings=settings, upstream=upstream, router=router, store=jobs, metrics=metrics
            )
            self.executors[ExecutorKind.BATCH] = self.batch

    @property
    def weights(self) -> dict[str, float]:
        """Fair-share weights of the keys whose weight is not 1 (read by the executors)."""
        return self.direct.weights

    @weights.setter
    def weights(self, weights: dict[str, float]) -> None:
        self.direct.weights = weights

    def routed(self, model: ModelConfig, work: Work) -> tuple[Executor, Work]:
        """The executor of the cheapest path that fits ``work``'s window (``paths.py``), and
        the work bound to that path's deployment. A path whose executor this process lacks
        (a ``batch`` deployment before its poller is wired) falls back to ``direct``."""
        apis = () if self.batch is None or work.events is not None else self.batch.apis
        path = paths.choose(
            model,
            work.endpoint,
            work.pin,
            work.expires_at,
            dt.datetime.now(dt.UTC),
            batch_apis=tuple(apis),
        )
        executor = self.executors.get(path.executor)
        if executor is None:
            return self.executors[ExecutorKind.DIRECT], work
        return executor, dataclasses.replace(work, path=path.executor, pin=path.deployment)

    async def attempt(self, work: Work, *, cached: bool = False) -> Attempt | None:
        """One attempt at ``work``: an outcome, a retry, or None when its executor took it over.

        ``cached``: the call may be answered from the owner's response cache (or an identical
        call in flight here), and its answer is remembered. A completed call carries its usage
        (estimated if the upstream reported none) and its cost at the work's pricing tier;
        both are counted in the metrics under the key's name.
        """
        model = self.settings.models.get(work.model)
        if model is None:
            return Attempt(
                Outcome(
                    status=Status.FAILED,
                    error={
                        "code": ErrorCode.MODEL_NOT_CONFIGURED,
                        "message": f"The model '{work.model}' is no longer configured.",
                    },
                )
            )
        endpoint, body, owner = work.endpoint, work.body, work.owner
        lookup: Lookup | None = None
        if self.cache is not None and cache_of(model) is not None:
            if not cached:
                lookup = BYPASSED
            elif work.events is not None:  # a stream was looked up at the gateway: remember
                lookup = Lookup(CacheResult.MISS, self.cache.key_of(endpoint, body, model))
            else:
                lookup = await self.cache.lookup(endpoint, body, model, owner)
                if work.tier == PriceTier.BATCH:  # single calls were counted at the gateway
                    self.cache.count(model.name, lookup.result)
                if not lookup.hit and lookup.key is not None:
                    lookup = await self._follow(owner, model, endpoint, body, lookup) or lookup
                if lookup.hit:
                    return Attempt(self._hit(model, endpoint, body, lookup, work.tier, work.key))
        executor, work = self.routed(model, work)
        if lookup is None or lookup.key is None:
            return _tagged(await executor.execute(model, work), lookup, work.path)
        flight = (owner, model.name, lookup.key.exact)
        leader = asyncio.get_running_loop().create_future()
        self._flights.setdefault(flight, leader)
        result: Attempt | None = None
        try:
            result = await executor.execute(model, work)
        finally:
            if self._flights.get(flight) is leader:
                del self._flights[flight]
            leader.set_result(result.outcome if result is not None else None)
        outcome = result.outcome if result is not None else None
        if outcome is not None and outcome.status == Status.COMPLETED:
            assert self.cache is not None
            self.cache.remember(
                lookup,
                owner=owner,
                model=model,
                endpoint=endpoint,
                request=body,
                answer=outcome.response_body,
            )
        return _tagged(result, lookup, work.path)

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


def _tagged(result: Attempt | None, lookup: Lookup | None, path: str) -> Attempt | None:
    """``result`` with the path it was routed to, and what the cache did on its completed
    outcome (the row's ``cache``)."""
    if result is None:
        return result
    outcome = result.outcome
    if lookup is None or outcome is None or outcome.status != Status.COMPLETED:
        return dataclasses.replace(result, path=path)
    tagged = dataclasses.replace(outcome, cache=lookup.result)
    return dataclasses.replace(result, outcome=tagged, path=path)
