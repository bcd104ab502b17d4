"""Prometheus metrics: requests by tier and status, latency histograms, queue depth and age,
the fleet's processes, budgets and live batches (docs/observability.md lists them all)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.token_usage import TokenUsage
from app.vocabulary import (
    LIVE_BATCH,
    OPENAI_RESPONSE_CODES,
    UPSTREAM_STATUS_PREFIX,
    CacheResult,
    DeploymentState,
    ErrorCode,
    LimitCode,
    ProcessKind,
    Status,
    UsagePath,
)

TOKEN_KINDS = ("input", "cached", "output", "reasoning")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# The ``code`` of tiergate_too_many_requests: a key's own limits by name, the rest (an
# upstream's 429 passed on, a flex request that expired waiting for capacity) as ``other``.
LIMIT_CODES = frozenset(LimitCode)
OTHER_CODE = "other"
# The ``code`` of tiergate_deferred_outcomes: tiergate's own codes, ``upstream_<status>`` for
# an upstream's error answer, the OpenAI codes a stream's failure may carry, else ``other``
# (an upstream's own free-text code never becomes a label value).
ERROR_CODES = frozenset(ErrorCode)
CACHE_HITS = frozenset({CacheResult.HIT, CacheResult.SEMANTIC_HIT})
# (model, tier, status, code, executor) of tiergate_deferred_outcomes.
OutcomeLabels = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class FleetView:
    """What a scrape read of the fleet (app/store/fleet_gauges.py): live processes by kind,
    each budgeted key's (name, period, budget, spent) in USD, and the Batch API's live
    batches as (status, batches, lines)."""

    processes: dict[str, int] = field(default_factory=dict)
    budgets: list[tuple[str, str, float, float]] = field(default_factory=list)
    batches: list[tuple[str, int, int]] = field(default_factory=list)


class Metrics:
    """One registry per app, so several apps (tests) can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tiergate_requests",
            "Inference requests by endpoint, tier and outcome.",
            ["endpoint", "tier", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tiergate_request_seconds",
            "Time from accept to answer, by endpoint and tier.",
            ["endpoint", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "tiergate_queue_depth",
            "Live request rows by model, tier and status.",
            ["model", "tier", "status"],
            registry=self.registry,
        )
        self.queue_depth_age = Gauge(
            "tiergate_queue_depth_age_seconds",
            "Age of the tiergate_queue_depth count (-1: never counted).",
            registry=self.registry,
        )
        self.queue_oldest_age = Gauge(
            "tiergate_queue_oldest_age_seconds",
            "Age of the oldest pending (queued, not yet running) row by model and tier, as of"
            " the scrape (from the last count of the queue).",
            ["model", "tier"],
            registry=self.registry,
        )
        self.processes = Gauge(
            "tiergate_processes",
            "Gateway and worker processes whose heartbeat is fresh (within three"
            " limits.heartbeat_s), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.budget = Gauge(
            "tiergate_key_budget_usd",
            "Each budgeted key's budget in USD for its period (day, month, total).",
            ["key", "period"],
            registry=self.registry,
        )
        self.budget_spent = Gauge(
            "tiergate_key_budget_spent_usd",
            "What each budgeted key spent in USD in its current period.",
            ["key", "period"],
            registry=self.registry,
        )
        self.batches = Gauge(
            "tiergate_batches",
            "Batch API batches not yet final, by status.",
            ["status"],
            registry=self.registry,
        )
        self.batch_lines = Gauge(
            "tiergate_batch_lines",
            "Lines of the Batch API batches not yet final, by the batch's status (the lines"
            ' still to run are tiergate_queue_depth{tier="batch"}).',
            ["status"],
            registry=self.registry,
        )
        self.too_many_requests = Counter(
            "tiergate_too_many_requests",
            "429 answers by code: rate_limit_exceeded (a key over its rpm/tpm),"
            " insufficient_quota (a key's budget spent), other (an upstream's 429 passed on, a"
            " flex request that expired waiting for capacity).",
            ["code"],
            registry=self.registry,
        )
        self.waiting_clients = Gauge(
            "tiergate_waiting_clients",
            "Blocking flex clients waiting in this process.",
            registry=self.registry,
        )
        self.large_body_bytes = Gauge(
            "tiergate_large_body_bytes",
            "Bytes of large request bodies held now (bounded by limits.inflight_body_bytes).",
            registry=self.registry,
        )
        self.large_bodies_waiting = Gauge(
            "tiergate_large_bodies_waiting",
            "Large-body calls waiting for room under limits.inflight_body_bytes.",
            registry=self.registry,
        )

        self.tokens = Counter(
            "tiergate_tokens",
            "Tokens of finished requests by model, pricing tier, key name and kind (input,"
            " cached, output, reasoning; cached is part of input, reasoning of output).",
            ["model", "tier", "key", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "tiergate_cost_usd",
            "Cost in USD of finished requests by model, pricing tier and key name"
            " (priced models only).",
            ["model", "tier", "key"],
            registry=self.registry,
        )
        self.estimated = Counter(
            "tiergate_usage_estimated_requests",
            "Finished requests whose usage tiergate estimated (the upstream reported none).",
            ["model", "tier", "key"],
            registry=self.registry,
        )
        self.cache = Counter(
            "tiergate_cache",
            "Calls of cache-enabled models by model and what the cache did (hit, semantic-hit,"
            " miss, bypass).",
            ["model", "result"],
            registry=self.registry,
        )
        self.deferred = Counter(
            "tiergate_deferred_outcomes",
            "Deferred rows (flex, background, Batch API lines) brought to a final status by"
            " this worker process, by model, tier (flex, background, batch), status, error"
            " code (empty when completed) and executor (direct, flex, batch, cache, none).",
            ["model", "tier", "status", "code", "executor"],
            registry=self.registry,
        )
        self.maintenance_failures = Counter(
            "tiergate_maintenance_failures",
            "Failed runs of a worker's maintenance duties by duty (database outages included).",
            ["duty"],
            registry=self.registry,
        )
        # The children of each (model, tier, key): label lookups are kept off the hot path.
        self._usage_children: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._deferred_children: dict[OutcomeLabels, Any] = {}

    def observe_usage(
        self, model: str, tier: str, key: str, usage: TokenUsage, cost: Decimal | None
    ) -> None:
        """Count a finished request's tokens and cost (in the process that finished it)."""
        if not usage.known:
            return
        labels = (model, tier, key)
        children = self._usage_children.get(labels)
        if children is None:
            children = self._usage_children[labels] = (
                *(self.tokens.labels(*labels, kind) for kind in TOKEN_KINDS),
                self.cost.labels(*labels),
                self.estimated.labels(*labels),
            )
        given, cached, output, reasoning, spent, estimated = children
        given.inc(usage.input or 0)
        output.inc(usage.output or 0)
        if usage.cached:
            cached.inc(usage.cached)
        if usage.reasoning:
            reasoning.inc(usage.reasoning)
        if cost is not None:
            spent.inc(float(cost))
        if usage.estimated:
            estimated.inc()

    def watch_deployments(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        """Export every deployment's state, as this process sees it, at each scrape."""
        self.registry.register(DeploymentCollector(snapshot))

    def observe_request(self, endpoint: str, tier: str, status: str, seconds: float) -> None:
        labels = (endpoint, tier, status)
        children = self._request_children.get(labels)
        if children is None:  # labels() validates and locks: 3.4 us a call, 1.2 us without
            children = self._request_children[labels] = (
                self.requests.labels(*labels),
                self.latency.labels(endpoint, tier),
            )
        children[0].inc()
        children[1].observe(seconds)

    def count_deferred(self, labels: OutcomeLabels, n: int = 1) -> None:
        """Count ``n`` deferred rows that ended with ``labels`` (:func:`outcome_labels`)."""
        child = self._deferred_children.get(labels)
        if child is None:
            child = self._deferred_children[labels] = self.deferred.labels(*labels)
        child.inc(n)

    def refused(self, code: str | None) -> None:
        """Count a 429 answer (off the success path: only refusals pay for it)."""
        self.too_many_requests.labels(code if code in LIMIT_CODES else OTHER_CODE).inc()

    def render(
        self,
        depth: Iterable[tuple[str, str, str, int]],
        depth_age_s: float | None,
        waiting: int,
        oldest: Iterable[tuple[str, str, float]] = (),
        fleet: FleetView | None = None,
    ) -> bytes:
        """The exposition text, with the gauges a scrape read (``fleet``: None if unread)."""
        self.queue_depth.clear()
        for model, tier, status, count in depth:
            self.queue_depth.labels(model, tier, status).set(count)
        self.queue_depth_age.set(-1.0 if depth_age_s is None else depth_age_s)
        self.queue_oldest_age.clear()
        for model, tier, seconds in oldest:
            self.queue_oldest_age.labels(model, tier).set(seconds)
        self.waiting_clients.set(waiting)
        if fleet is not None:
            self._show_fleet(fleet)
        return generate_latest(self.registry)

    def _show_fleet(self, fleet: FleetView) -> None:
        for kind in ProcessKind:  # 0 when none is alive: "workers gone" needs the zero
            self.processes.labels(str(kind)).set(fleet.processes.get(kind, 0))
        self.budget.clear()
        self.budget_spent.clear()
        for key, period, budget, spent in fleet.budgets:
            self.budget.labels(key, period).set(budget)
            self.budget_spent.labels(key, period).set(spent)
        live = {status: (count, lines) for status, count, lines in fleet.batches}
        for status in LIVE_BATCH:
            count, lines = live.get(status, (0, 0))
            self.batches.labels(str(status)).set(count)
            self.batch_lines.labels(str(status)).set(lines)


def outcome_code(status: str, error: Any, response_status: int | None) -> str:
    """The bounded ``code`` label of a final row: empty when it completed."""
    if status == Status.COMPLETED:
        return ""
    code = error.get("code") if isinstance(error, dict) else None
    if code in ERROR_CODES:
        return str(code)
    if response_status is not None and 400 <= response_status <= 599:
        return f"{UPSTREAM_STATUS_PREFIX}{response_status}"
    if isinstance(code, str):
        digits = code.removeprefix(UPSTREAM_STATUS_PREFIX)
        if code != digits and len(digits) == 3 and digits.isdigit():
            return code
        if code in OPENAI_RESPONSE_CODES:
            return code
    return OTHER_CODE


def outcome_executor(executor: str | None, cache: str | None, path: str | None) -> str:
    """The ``executor`` label: the path the row ran on, ``cache`` for a cache hit, ``none``
    when no call was tried (as ``requests.executor``'s report, ``sql_executor_path``)."""
    if executor:
        return executor
    if cache in CACHE_HITS:
        return UsagePath.CACHE
    return path or UsagePath.NONE


class DeploymentCollector(Collector):
    """``tiergate_deployment_*``: state, calls in flight and calls made, per deployment."""

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "deployment"]
        state = GaugeMetricFamily(
            "tiergate_deployment_state",
            "1 for each deployment's state (healthy, out, probing) as this process sees it.",
            labels=[*labels, "state"],
        )
        in_flight = GaugeMetricFamily(
            "tiergate_deployment_in_flight",
            "Calls in flight from this process to each deployment.",
            labels=labels,
        )
        calls = CounterMetricFamily(
            "tiergate_deployment_calls",
            "Calls this process made to each deployment.",
            labels=labels,
        )
        engine = EngineFamilies(labels)
        for d in self.snapshot():
            names = [d["model"], d["deployment"]]
            for each in DeploymentState:
                state.add_metric([*names, str(each)], 1.0 if d["state"] == each else 0.0)
            in_flight.add_metric(names, d["in_flight"])
            calls.add_metric(names, d["calls"])
            if "engine" in d:
                engine.add(names, d["engine"])
        yield from (state, in_flight, calls)
        yield from engine.families()


class EngineFamilies:
    """``tiergate_engine_*``: what this process reads of each engine deployment's metrics
    (``engine:``), and whether it can go by them."""

    def __init__(self, labels: list[str]) -> None:
        self.ok = GaugeMetricFamily(
            "tiergate_engine_metrics_ok",
            "1 while the engine's metrics are read and usable; 0: declared capacity rules.",
            labels=labels,
        )
        self.running = GaugeMetricFamily(
            "tiergate_engine_requests_running",
            "Requests the engine runs, by its last usable reading.",
            labels=labels,
        )
        self.waiting = GaugeMetricFamily(
            "tiergate_engine_requests_waiting",
            "Requests waiting in the engine, by its last usable reading.",
            labels=labels,
        )
        self.kv_cache = GaugeMetricFamily(
            "tiergate_engine_kv_cache_usage",
            "The engine's KV-cache use (0..1), by its last usable reading.",
            labels=labels,
        )
        self.limit = GaugeMetricFamily(
            "tiergate_engine_deferred_limit",
            "Deferred calls this process may have in flight by the engine's load.",
            labels=labels,
        )
        self.reads = CounterMetricFamily(
            "tiergate_engine_metrics_reads", "Readings of the engine's metrics.", labels=labels
        )
        self.failures = CounterMetricFamily(
            "tiergate_engine_metrics_failures",
            "Readings that failed or lied (garbage, missing series).",
            labels=labels,
        )
        self.refused = GaugeMetricFamily(
            "tiergate_engine_priority_refused",
            "1 while the engine refuses the priority field (calls go without it).",
            labels=labels,
        )

    def add(self, names: list[str], engine: dict[str, Any]) -> None:
        """One deployment's engine state (``EngineWatch.state``)."""
        self.ok.add_metric(names, 1.0 if engine["ok"] else 0.0)
        for family, value in (
            (self.running, engine["running"]),
            (self.waiting, engine["waiting"]),
            (self.kv_cache, engine["kv_cache"]),
            (self.limit, engine["deferred_limit"]),
        ):
            if value is not None:
                family.add_metric(names, value)
        self.reads.add_metric(names, engine["reads"])
        self.failures.add_metric(names, engine["failures"])
        self.refused.add_metric(names, 1.0 if engine["priority_refused"] else 0.0)

    def families(self) -> Iterator[Metric]:
        """Every family that has a sample."""
        for family in (
            self.ok,
            self.running,
            self.waiting,
            self.kv_cache,
            self.limit,
            self.reads,
            self.failures,
            self.refused,
        ):
            if family.samples:
                yield family
