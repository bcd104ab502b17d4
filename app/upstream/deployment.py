"""A deployment at run time: its config, its circuit and the calls in flight to it."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from app.settings import DeploymentConfig, HealthLimits, ModelConfig
from app.upstream.health import Health

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(eq=False)
class Deployment:
    """One deployment of one model, as this process routes to it."""

    model: ModelConfig
    config: DeploymentConfig
    health: Health
    in_flight: int = 0
    calls: int = 0

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

    def has_room(self) -> bool:
        limit = self.config.max_concurrency
        return limit is None or self.in_flight < limit

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
            "calls": self.calls,
            "trips": self.health.trips,
            "out_until": round(time.time() + out_for_s, 3) if out_for_s else None,
            "last_error": self.health.last_error,
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
