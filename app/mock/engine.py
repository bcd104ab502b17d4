"""The mock provider's engine mode: calls served as an inference engine serves them, and the
Prometheus text the engine publishes on ``/metrics``.

:class:`EngineScheduler` has ``slots`` running slots (vLLM's ``--max-num-seqs``, SGLang's
``--max-running-requests``, llama.cpp's ``--parallel``). A call accumulates its service time
only while it holds a slot, in steps of ``step_ms``; the others wait. Waiting calls are admitted
first come first served or, by priority, best rank first (then by arrival). With preemption a
waiting call whose rank beats the worst running call's by more than a margin takes its slot:
the running call goes back to waiting and keeps the progress it made. One asyncio task steps
the running calls and exits when none are left; an arrival starts it again.

:class:`MockEngine` applies one engine's rules on top (checked against the engines' sources):

* ``vllm``: ``--scheduling-policy priority`` orders waiting calls by ``(priority, arrival)``,
  the lower value first, and preempts the running call with the largest
  ``(priority, arrival)``. vLLM's V1 scheduler preempts only when the KV cache runs short;
  here a full slot table stands for a full cache, so a better waiting call preempts at once.
  Under ``fcfs`` a non-zero ``priority`` is refused with 400 ``Got priority N but Priority
  scheduling is not enabled.`` as vLLM's V0 engine did (V1 ignores it; control
  ``refuse_priority: false`` does so too). Metrics: ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc``
  before 0.10), labels ``engine`` and ``model_name``.
* ``sglang``: ``priority`` stands for ``--enable-priority-scheduling``: the larger value first
  (SGLang's default; ``--schedule-low-priority-values-first`` is not mirrored), a call without
  one is last, and a waiting call preempts a running one whose priority is more than 10 lower
  (``--priority-scheduling-preemption-threshold``). Under ``fcfs`` the field is ignored unless
  control ``refuse_priority: true`` (``--abort-on-priority-when-disabled``): then any call
  that carries one is answered 503 ``Using priority is disabled for this server. Please send
  a new request without a priority.`` Metrics (``--enable-metrics``):
  ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``.
* ``llamacpp``: no priority scheduler, the field is ignored. Metrics (``--metrics``):
  ``llamacpp:requests_processing``, ``llamacpp:requests_deferred``; llama.cpp's server
  publishes no KV-cache series since it dropped ``llamacpp:kv_cache_usage_ratio``.

KV use is running calls (plus control ``extra_running``) over slots, unless control
``kv_cache`` sets it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.mock.controls import BadRequestError
from app.vocabulary import EngineKind

ENGINES = (EngineKind.VLLM.value, EngineKind.SGLANG.value, EngineKind.LLAMACPP.value)
SCHEDULING_POLICIES = ("fcfs", "priority")
# ok: the engine's text; garbage: 200 with text no Prometheus parser reads; missing: without
# the running/waiting/KV series; error: 500; disabled: as the engine answers with metrics off.
METRICS_MODES = ("ok", "garbage", "missing", "error", "disabled")
DEFAULT_CAPACITY = 8
DEFAULT_STEP_MS = 5.0
MAX_DESCRIBED_CALLS = 100  # GET /_mock/engine lists the oldest calls in progress, at most these
SGLANG_PREEMPTION_THRESHOLD = 10
VLLM_REFUSAL = "Got priority {priority} but Priority scheduling is not enabled."
SGLANG_REFUSAL = (
    "Using priority is disabled for this server. Please send a new request without a priority."
)
LLAMACPP_METRICS_OFF = "This server does not support metrics endpoint. Start it with `--metrics`"
WORST_RANK = sys.maxsize + 1  # SGLang gives a call without priority -sys.maxsize - 1
# vLLM's e2e latency buckets (seconds).
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


@dataclass(frozen=True)
class Served:
    """How one call was served: seconds spent waiting and holding a slot, and how often it
    was preempted."""

    waited_s: float
    ran_s: float
    preemptions: int


@dataclass(eq=False)
class _Job:
    rank: int
    seq: int
    need_s: float
    label: str
    arrived: float
    ran_s: float = 0.0  # service time accumulated before its current slot
    since: float | None = None  # when it got its current slot (None: waiting)
    preemptions: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    ended: float = 0.0

    def progress(self, now: float) -> float:
        return self.ran_s + (now - self.since if self.since is not None else 0.0)


class EngineScheduler:
    """Running slots, a waiting queue and optional priority preemption (see the module
    docstring). ``preempt_margin`` None: never preempt."""

    def __init__(
        self,
        slots: int,
        step_ms: float = DEFAULT_STEP_MS,
        *,
        by_rank: bool = False,
        preempt_margin: int | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if step_ms <= 0:
            raise ValueError("step_ms must be > 0")
        self.slots = slots
        self.step_s = step_ms / 1000
        self.by_rank = by_rank
        self.preempt_margin = preempt_margin
        self._running: list[_Job] = []
        self._waiting: list[_Job] = []
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.reset_counts()

    def reset_counts(self) -> None:
        """Zero the counters (calls in progress go on)."""
        self.preemptions = 0
        self.served = 0
        self.by_priority: dict[str, int] = {}
        self.steps = 0
        self.busy_slot_steps = 0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every call in progress: its label, state, rank, progress and preemptions."""
        now = time.monotonic()
        return [
            {
                "label": job.label,
                "state": "running" if job.since is not None else "waiting",
                "rank": job.rank,
                "progress_ms": job.progress(now) * 1000,
                "preemptions": job.preemptions,
            }
            for job in sorted(self._running + self._waiting, key=lambda j: j.seq)
        ]

    async def serve(self, rank: int, need_ms: float, label: str = "0") -> Served:
        """Wait for a slot, hold it for ``need_ms`` of service time (possibly in several
        turns), then return how the call went. A cancelled call leaves at once."""
        self._seq += 1
        job = _Job(rank, self._seq, max(0.0, need_ms) / 1000, label, time.monotonic())
        self._waiting.append(job)
        self._admit(job.arrived)
        self._kick()
        try:
            await job.finished.wait()
        finally:
            if not job.finished.is_set():  # cancelled: free its slot or place
                for queue in (self._running, self._waiting):
                    if job in queue:
                        queue.remove(job)
                self._admit(time.monotonic())
        return Served(job.ended - job.arrived - job.ran_s, job.ran_s, job.preemptions)

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._running or self._waiting:
            await asyncio.sleep(self.step_s)
            self._step(time.monotonic())

    def _step(self, now: float) -> None:
        """One engine step: finish the calls that got their service time, then admit."""
        self.steps += 1
        self.busy_slot_steps += len(self._running)
        for job in [j for j in self._running if j.progress(now) >= j.need_s]:
            self._running.remove(job)
            job.ran_s, job.since, job.ended = job.progress(now), None, now
            self.served += 1
            self.by_priority[job.label] = self.by_priority.get(job.label, 0) + 1
            job.finished.set()
        self._admit(now)

    def _key(self, job: _Job) -> tuple[int, int]:
        return (job.rank, job.seq) if self.by_rank else (0, job.seq)

    def _admit(self, now: float) -> None:
        """Fill free slots from the waiting queue, then preempt while a waiting call beats the
        worst running one by more than ``preempt_margin``."""
        while self._waiting:
            best = min(self._waiting, key=self._key)
            if len(self._running) >= self.slots:
                if self.preempt_margin is None:
                    return
                worst = max(self._running, key=self._key)
                if worst.rank - best.rank <= self.preempt_margin:
                    return
                self._running.remove(worst)
                worst.ran_s, worst.since = worst.progress(now), None
                worst.preemptions += 1
                self.preemptions += 1
                self._waiting.append(worst)
            self._waiting.remove(best)
            best.since = now
            self._running.append(best)


@dataclass(frozen=True)
class Refusal:
    """An answer the engine gives instead of serving the call."""

    status: int
    message: str
    body: dict[str, Any]


@dataclass(frozen=True)
class MetricsAnswer:
    status: int
    text: str
    media_type: str


@dataclass
class EngineControls:
    """What ``POST /_mock/engine`` sets (see app/mock/server.py)."""

    refuse_priority: bool
    extra_waiting: int = 0
    extra_running: int = 0
    kv_cache: float | None = None
    metrics: str = "ok"


def read_priority(body: Mapping[str, Any]) -> int | None:
    """The call's ``priority`` field (None when absent or null); not an integer is a 400."""
    value = body.get("priority")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError("priority must be an integer", "priority")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class MockEngine:
    """One engine's scheduling, priority rules, metrics and test controls."""

    def __init__(
        self,
        kind: str,
        scheduling_policy: str = "fcfs",
        capacity: int = DEFAULT_CAPACITY,
        step_ms: float = DEFAULT_STEP_MS,
        model_name: str = "mock-model",
    ) -> None:
        if kind not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        if scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {SCHEDULING_POLICIES}")
        if kind == EngineKind.LLAMACPP and scheduling_policy == "priority":
            raise ValueError("llamacpp has no priority scheduling")
        self.kind = kind
        self.policy = scheduling_policy
        self.capacity = capacity
        self.step_ms = step_ms
        self.model_name = model_name
        prioritized = scheduling_policy == "priority"
        margin = SGLANG_PREEMPTION_THRESHOLD if kind == EngineKind.SGLANG else 0
        self.scheduler = EngineScheduler(
            capacity, step_ms, by_rank=prioritized, preempt_margin=margin if prioritized else None
        )
        self.reset()

    def reset(self) -> None:
        """Controls back to their defaults; counters and the latency histogram to zero."""
        self.controls = EngineControls(refuse_priority=self.kind == EngineKind.VLLM)
        self.scheduler.reset_counts()
        self._latency_counts = [0] * len(LATENCY_BUCKETS)
        self._latency_sum = 0.0
        self._latency_n = 0

    # -- calls --------------------------------------------------------------------------

    def priority_of(self, body: Mapping[str, Any]) -> int | None:
        """The priority the engine reads from a call (llama.cpp reads none)."""
        return None if self.kind == EngineKind.LLAMACPP else read_priority(body)

    def refusal(self, priority: int | None, path: str) -> Refusal | None:
        """What the engine answers instead of serving a call with ``priority``, if it does."""
        if self.policy == "priority" or not self.controls.refuse_priority:
            return None
        if self.kind == EngineKind.VLLM and priority:
            message = VLLM_REFUSAL.format(priority=priority)
            body = {"object": "error", "message": message, "type": "BadRequestError"}
            return Refusal(400, message, {**body, "param": None, "code": 400})
        if self.kind == EngineKind.SGLANG and priority is not None:
            if path == "/v1/responses":  # SGLang nests its errors on this path only
                error = {"message": SGLANG_REFUSAL, "type": "Service Unavailable"}
                return Refusal(
                    503, SGLANG_REFUSAL, {"error": {**error, "param": None, "code": 503}}
                )
            body = {"object": "error", "message": SGLANG_REFUSAL, "type": "503"}
            return Refusal(503, SGLANG_REFUSAL, {**body, "param": None, "code": 503})
        return None

    def _rank(self, priority: int | None) -> int:
        if self.kind == EngineKind.SGLANG:  # larger first; none last
            return WORST_RANK if priority is None else -priority
        return priority or 0

    def _label(self, priority: int | None) -> str:
        if priority is None:
            return "none" if self.kind == EngineKind.SGLANG else "0"
        return str(priority)

    async def serve(self, priority: int | None, need_ms: float) -> Served:
        """Serve one call for ``need_ms`` of service time."""
        served = await self.scheduler.serve(self._rank(priority), need_ms, self._label(priority))
        latency = served.waited_s + served.ran_s
        self._latency_sum += latency
        self._latency_n += 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if latency <= bound:
                self._latency_counts[i] += 1
        return served

    # -- controls -----------------------------------------------------------------------

    def apply(self, payload: Any) -> None:
        """Set the controls in ``payload`` (any subset); a bad one sets none (400)."""
        if not isinstance(payload, dict):
            raise BadRequestError("the body must be a JSON object")
        unknown = set(payload) - {f for f in EngineControls.__dataclass_fields__}
        if unknown:
            raise BadRequestError(f"unknown engine controls: {sorted(unknown)}")
        for name in ("extra_waiting", "extra_running"):
            if name in payload and not _is_count(payload[name]):
                raise BadRequestError(f"{name} must be an integer >= 0", name)
        kv = payload.get("kv_cache")
        number = isinstance(kv, int | float) and not isinstance(kv, bool)
        if "kv_cache" in payload and kv is not None and not (number and 0.0 <= kv <= 1.0):
            raise BadRequestError("kv_cache must be null or a number in [0, 1]", "kv_cache")
        if "metrics" in payload and payload["metrics"] not in METRICS_MODES:
            raise BadRequestError(f"metrics must be one of {METRICS_MODES}", "metrics")
        if "refuse_priority" in payload and not isinstance(payload["refuse_priority"], bool):
            raise BadRequestError("refuse_priority must be true or false", "refuse_priority")
        for name, value in payload.items():
            setattr(
                self.controls,
                name,
                float(value) if name == "kv_cache" and value is not None else value,
            )

    def published(self) -> tuple[int, int, float]:
        """The running and waiting counts and KV-cache use that /metrics reports."""
        running = self.scheduler.running + self.controls.extra_running
        waiting = self.scheduler.waiting + self.controls.extra_waiting
        kv = self.controls.kv_cache
        return running, waiting, min(1.0, running / self.capacity) if kv is None else kv

    def describe(self) -> dict[str, Any]:
        """``GET /_mock/engine``: the configuration, the counters, the controls, what /metrics
        publishes and the oldest calls in progress."""
        running, waiting, kv = self.published()
        return {
            "engine": self.kind,
            "scheduling_policy": self.policy,
            "capacity": self.capacity,
            "step_ms": self.step_ms,
            "running": self.scheduler.running,
            "waiting": self.scheduler.waiting,
            "preemptions": self.scheduler.preemptions,
            "served": self.scheduler.served,
            "by_priority": dict(self.scheduler.by_priority),
            **vars(self.controls),
            "published": {"running": running, "waiting": waiting, "kv_cache": kv},
            "calls": self.scheduler.snapshot()[:MAX_DESCRIBED_CALLS],
        }

    # -- /metrics -----------------------------------------------------------------------

    def metrics(self) -> MetricsAnswer:
        """What ``GET /metrics`` answers, per control ``metrics``."""
        mode = self.controls.metrics
        if mode == "error":
            return MetricsAnswer(500, "Internal Server Error", "text/plain; charset=utf-8")
        if mode == "disabled":
            if self.kind == EngineKind.LLAMACPP:
                error = {
                    "code": 501,
                    "message": LLAMACPP_METRICS_OFF,
                    "type": "not_supported_error",
                }
                body = json.dumps({"error": error})
                return MetricsAnswer(501, body, "application/json; charset=utf-8")
            return MetricsAnswer(404, '{"detail":"Not Found"}', "application/json")
        if mode == "garbage":
            text = f'{self.kind}:num_requests_running{{engine="0" 3\n<html>busy</html>\n\x00\x01'
            return MetricsAnswer(200, text, "text/plain; version=0.0.4; charset=utf-8")
        render = {"vllm": self._vllm, "sglang": self._sglang, "llamacpp": self._llamacpp}
        text = "".join(render[self.kind](with_load=mode != "missing"))
        return MetricsAnswer(200, text, "text/plain; version=0.0.4; charset=utf-8")

    def _histogram(self, name: str, doc: str, labels: dict[str, str]) -> list[str]:
        lines = [f"# HELP {name} {doc}\n", f"# TYPE {name} histogram\n"]
        for bound, count in zip(LATENCY_BUCKETS, self._latency_counts, strict=True):
            lines.append(_sample(f"{name}_bucket", {**labels, "le": repr(bound)}, count))
        lines.append(_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, self._latency_n))
        lines.append(_sample(f"{name}_count", labels, self._latency_n))
        lines.append(_sample(f"{name}_sum", labels, self._latency_sum))
        return lines

    def _vllm(self, with_load: bool) -> list[str]:
        running, waiting, kv = self.published()
        labels = {"engine": "0", "model_name": self.model_name}
        lines = _family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            [({}, 1.6e9)],
        )
        if with_load:
            lines += _family(
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                [(labels, running)],
            )
            lines += _family(
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                [(labels, waiting)],
            )
            lines += _family(
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                [(labels, kv)],
            )
        lines += _family(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            [(labels, self.scheduler.preemptions)],
        )
        success = [
            ({**labels, "finished_reason": reason}, n)
            for reason, n in (("stop", self.scheduler.served), ("length", 0), ("abort", 0))
        ]
        lines += _family(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            success,
        )
        return lines + self._histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
        )

    def _sglang(self, with_load: bool) -> list[str]:
        running, waiting, kv = self.published()
        labels = {
            "engine_type": "unified",
            "model_name": self.model_name,
            "pp_rank": "0",
            "tp_rank": "0",
        }
        lines = _family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            [({}, 2.1e9)],
        )
        if with_load:
            lines += _family(
                "sglang:num_running_reqs",
                "gauge",
                "The number of running requests.",
                [(labels, running)],
            )
        lines += _family(
            "sglang:num_used_tokens",
            "gauge",
            "The number of used tokens.",
            [(labels, running * 512)],
        )
        if with_load:
            lines += _family("sglang:token_usage", "gauge", "The token usage.", [(labels, kv)])
        lines += _family(
            "sglang:gen_throughput",
            "gauge",
            "The generation throughput (token/s).",
            [(labels, 40.0 * running)],
        )
        if with_load:
            lines += _family(
                "sglang:num_queue_reqs",
                "gauge",
                "The number of requests in the waiting queue.",
                [(labels, waiting)],
            )
        lines += _family(
            "sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", [(labels, 0.0)]
        )
        model = {"model_name": self.model_name}
        lines += _family(
            "sglang:num_requests_total",
            "counter",
            "Number of requests processed.",
            [(model, self.scheduler.served)],
        )
        return lines + self._histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            model,
        )

    def _llamacpp(self, with_load: bool) -> list[str]:
        """As llama.cpp's server writes it: counters, then gauges, no labels, C++ numbers."""
        running, waiting, _ = self.published()
        served, steps = self.scheduler.served, self.scheduler.steps
        counters = [
            (
                "prompt_tokens_total",
                "Number of prompt tokens processed, excluding cached tokens",
                served * 12,
            ),
            ("prompt_seconds_total", "Total time spent processing prompts", served * 0.01),
            ("tokens_predicted_total", "Number of generation tokens processed", served * 4),
            ("tokens_predicted_seconds_total", "Total time spent generating tokens", served * 0.1),
            (
                "n_decode_total",
                "Total number of llama_decode() calls, excluding speculative"
                " decoding and multimodal decoding",
                steps,
            ),
            (
                "n_tokens_max",
                "Largest observed sequence length (prompt + generation)",
                16 if served else 0,
            ),
        ]
        busy = self.scheduler.busy_slot_steps / max(steps, 1)
        gauges = [
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s", 1200.0),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s", 40.0),
            ("requests_processing", "Number of requests processing", running),
            ("requests_deferred", "Number of requests deferred", waiting),
            (
                "n_busy_slots_per_decode",
                "Average number of busy slots per llama_decode() call",
                busy,
            ),
        ]
        lines = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            for name, doc, value in items:
                if not with_load and name in ("requests_processing", "requests_deferred"):
                    continue
                lines += [
                    f"# HELP llamacpp:{name} {doc}\n",
                    f"# TYPE llamacpp:{name} {kind}\n",
                    f"llamacpp:{name} {float(value):g}\n",
                ]
        return lines


def _number(value: float) -> str:
    """As Python's prometheus_client writes a sample value."""
    return repr(float(value))


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}\n"
    text = ",".join(f'{key}="{val}"' for key, val in labels.items())
    return f"{name}{{{text}}} {_number(value)}\n"


def _family(
    name: str, kind: str, doc: str, samples: Sequence[tuple[dict[str, str], float]]
) -> list[str]:
    """One metric family in the Prometheus text format (0.0.4)."""
    head = [f"# HELP {name} {doc}\n", f"# TYPE {name} {kind}\n"]
    return head + [_sample(name, labels, value) for labels, value in samples]
