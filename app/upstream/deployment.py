"""A deployment at run time: its config, its circuit and the calls in flight to it."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from app.settings import DeploymentConfig, HealthLimits, ModelConfig
from app.upstream.engine_watch import EngineWatch
from app.upstream.health import Health
from app.vocabulary import CallClass, EngineKind, TokenField, UpstreamApi

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# How long a burst of realtime calls keeps deferred calls away from a deployment.
REALTIME_MEMORY_S = 5


class RecentMax:
    """The largest value noted in the last ``window_s`` seconds (one bucket per second)."""

    def __init__(self, window_s: int = REALTIME_MEMORY_S) -> None:
        self.window_s = window_s
        self._buckets: dict[int, int] = {}

    def note(self, now: float, value: int) -> None:
        second = int(now)
        if value > self._buckets.get(second, -1):
            self._buckets[second] = value
            if len(self._buckets) > 2 * self.window_s:
                self._buckets = {
                    s: v for s, v in self._buckets.items() if s > second - self.window_s
                }

    def value(self, now: float) -> int:
        first = int(now) - self.window_s
        return max((v for s, v in self._buckets.items() if s > first), default=0)


@dataclass(eq=False)
class Deployment:
    """One deployment of one model, as this process routes to it.

    Calls in flight are counted by kind: realtime calls, and deferred ones (flex, background,
    batch lines), which may only use what realtime calls leave of ``capacity``.
    """

    model: ModelConfig
    config: DeploymentConfig
    health: Health
    realtime_in_flight: int = 0
    deferred_in_flight: int = 0
    calls: int = 0
    realtime_peak: RecentMax = field(default_factory=RecentMax)
    # What the other live processes last published (their heartbeats).
    others_realtime: int = 0
    others_deferred: int = 0
    # From the config (the deployment's, else the model's), fixed for the process.
    speaks_chat: bool = field(init=False)
    token_field: TokenField | None = field(init=False)
    # Its engine's own load as this process reads it (``engine:`` set), else None.
    engine: EngineWatch | None = field(init=False)

    def __post_init__(self) -> None:
        self.engine = None
        if self.config.engine != EngineKind.NONE:
            self.engine = EngineWatch(self.config.engine, self.config.engine_load)
        self.speaks_chat = (self.config.api or self.model.api) == UpstreamApi.CHAT
        default = TokenField.MAX_TOKENS if self.speaks_chat else None
        self.token_field = self.config.max_tokens_field or self.model.max_tokens_field or default

    @property
    def in_flight(self) -> int:
        return self.realtime_in_flight + self.deferred_in_flight

    def begin(self, now: float, *, realtime: bool) -> None:
        self.calls += 1
        if realtime:
            self.realtime_in_flight += 1
            self.realtime_peak.note(now, self.realtime_in_flight)
        else:
            self.deferred_in_flight += 1

    def end(self, *, realtime: bool) -> None:
        if realtime:
            self.realtime_in_flight -= 1
        else:
            self.deferred_in_flight -= 1

    def realtime_load(self, now: float) -> int:
        """Realtime calls to reckon with: this process's recent peak plus the others'."""
        return max(self.realtime_peak.value(now), self.realtime_in_flight) + self.others_realtime

    def deferred_room(self, now: float) -> int | None:
        """How many more deferred calls it may take now (None: no bound): what the declared
        ``capacity`` leaves after realtime calls, and what the engine's own metrics allow,
        whichever is less (docs/fleet.md)."""
        declared = None
        if self.config.capacity is not None:
            used = self.realtime_load(now) + self.deferred_in_flight + self.others_deferred
            declared = self.config.capacity - used
        if self.engine is None:
            return declared
        measured = self.engine.room(now, self.deferred_in_flight)
        if measured is None or declared is None:
            return declared if measured is None else measured
        return min(declared, measured)

    def priority_of(self, call: CallClass | None, now: float) -> int | None:
        """The engine's priority field for a call of this kind (None: send none)."""
        priority = self.config.priority
        if priority is None or call is None:
            return None
        if self.engine is not None and self.engine.priority_refused(now):
            return None
        return priority.of(call)

    @classmethod
    def of(cls, model: ModelConfig, config: DeploymentConfig, limits: HealthLimits) -> Deployment:
        return cls(model=model, config=config, health=Health(limits))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def upstream(self) -> str:
        return self.config.upstream

    @property
    def target_model(self) -> str:
        """The model name the deployment knows."""
        return self.config.upstream_model or self.model.name

    def label(self, asked: str) -> str:
        """How answers and rows name it: ``gpu-a``, or ``llama-8b/gpu-a`` for a fallback."""
        return self.name if self.model.name == asked else f"{self.model.name}/{self.name}"

    def has_room(self, now: float, *, realtime: bool) -> bool:
        """Under ``max_concurrency``; and, for a deferred call, under what realtime leaves."""
        limit = self.config.max_concurrency
        if limit is not None and self.in_flight >= limit:
            return False
        room = None if realtime else self.deferred_room(now)
        return room is None or room > 0

    def headers(self) -> dict[str, str]:
        """What the provider wants to see, read from the environment at call time."""
        out = {name.lower(): _expand(value) for name, value in self.config.headers.items()}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            out.setdefault("authorization", f"Bearer {key}")
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        """Its state for ``/metrics``, the ``processes`` table and ``tiergate deployments``
        (``out_until`` in Unix seconds, so other processes can compare it with theirs)."""
        out_for_s = max(0.0, self.health.out_until - now)
        return {
            "model": self.model.name,
            "deployment": self.name,
            "state": str(self.health.state(now)),
            "in_flight": self.in_flight,
            "realtime_in_flight": max(self.realtime_peak.value(now), self.realtime_in_flight),
            "deferred_in_flight": self.deferred_in_flight,
            "calls": self.calls,
            "trips": self.health.trips,
            "out_until": round(time.time() + out_for_s, 3) if out_for_s else None,
            "last_error": self.health.last_error,
            **({"engine": self.engine.state(now)} if self.engine is not None else {}),
        }


def _expand(value: str) -> str:
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)


@dataclass
class Fleet:
    """The deployments of one model, in config order."""

    model: ModelConfig
    deployments: list[Deployment] = field(default_factory=list)

    def named(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)
