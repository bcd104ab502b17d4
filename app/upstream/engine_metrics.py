"""An inference engine's load, read from its Prometheus ``/metrics`` text.

Each engine names the same three facts its own way (docs/fleet.md):

* vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` before 0.10);
* SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``;
* llama.cpp's server (started with ``--metrics``): ``llamacpp:requests_processing``,
  ``llamacpp:requests_deferred`` and, in builds that have it, ``llamacpp:kv_cache_usage_ratio``.

A server with several engines (vLLM's data parallel ranks, several models) publishes one
sample per label set: running and waiting requests are summed, the KV cache's use is the
highest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.vocabulary import EngineKind


@dataclass(frozen=True)
class EngineSeries:
    """The series names of one engine (the first found of each tuple is read)."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_cache: tuple[str, ...]


SERIES: dict[EngineKind, EngineSeries] = {
    EngineKind.VLLM: EngineSeries(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_cache=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    EngineKind.SGLANG: EngineSeries(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_cache=("sglang:token_usage",),
    ),
    EngineKind.LLAMACPP: EngineSeries(
        running=("llamacpp:requests_processing",),
        waiting=("llamacpp:requests_deferred",),
        kv_cache=("llamacpp:kv_cache_usage_ratio",),
    ),
}


class BadMetrics(ValueError):
    """The text is not an engine's metrics: unparseable, or a series it must have is missing."""


@dataclass(frozen=True)
class EngineReading:
    """What the engine reported: requests running and waiting, KV-cache use (0..1, None when
    the engine publishes none)."""

    running: int
    waiting: int
    kv_cache: float | None


def parse_metrics(engine: EngineKind, text: str) -> EngineReading:
    """The engine's load from its ``/metrics`` text; ``BadMetrics`` says why it cannot be
    read."""
    series = SERIES[engine]
    wanted = {*series.running, *series.waiting, *series.kv_cache}
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = _name(line)
        if name in wanted:
            samples.setdefault(name, []).append(_value(line))
    running = _first(samples, series.running)
    waiting = _first(samples, series.waiting)
    if running is None or waiting is None:
        names = series.running[0] if running is None else series.waiting[0]
        raise BadMetrics(f"no {names} series in the metrics")
    kv = _first(samples, series.kv_cache)
    if kv is not None and max(kv) > 1:
        raise BadMetrics(f"KV-cache use above 1: {max(kv)}")
    return EngineReading(
        running=int(sum(running)),
        waiting=int(sum(waiting)),
        kv_cache=None if kv is None else max(kv),
    )


def _name(line: str) -> str:
    """A sample line's series name."""
    cut = len(line)
    for mark in ("{", " ", "\t"):
        at = line.find(mark)
        if 0 <= at < cut:
            cut = at
    return line[:cut]


def _value(line: str) -> float:
    """A sample line's value (labels and timestamp dropped): a finite number, not negative."""
    rest = line[line.rfind("}") + 1 :] if "{" in line else line.split(maxsplit=1)[-1]
    try:
        value = float(rest.split()[0])
    except (IndexError, ValueError):
        raise BadMetrics(f"unparseable metrics line: {line[:80]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise BadMetrics(f"not a count: {line[:80]!r}")
    return value


def _first(samples: dict[str, list[float]], names: tuple[str, ...]) -> list[float] | None:
    return next((samples[name] for name in names if name in samples), None)
