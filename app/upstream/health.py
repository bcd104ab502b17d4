"""One deployment's health as this process sees it: a circuit breaker with a growing cool-down.

``failures_to_trip`` failures in a row (connection refused, 5xx, a timeout before headers)
take the deployment out for ``cooldown_s``; when that ends one call, the probe, is let
through; its success brings the deployment back, its failure takes it out again for twice as
long (up to ``max_cooldown_s``). A 429 is not a fault: it only rests the deployment for its
``Retry-After`` (at most ``cooldown_s``). Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import HealthLimits
from app.vocabulary import DeploymentState


@dataclass
class Health:
    """The circuit of one deployment."""

    limits: HealthLimits
    failures: int = 0  # in a row
    trips: int = 0  # times taken out in a row (the cool-down doubles with each)
    out_until: float = 0.0
    probing: bool = False
    last_error: str | None = None

    def state(self, now: float) -> DeploymentState:
        """``healthy``, ``out`` (cooling down) or ``probing`` (one trial call allowed)."""
        if now < self.out_until:
            return DeploymentState.OUT
        return DeploymentState.PROBING if self.trips else DeploymentState.HEALTHY

    def usable(self, now: float) -> bool:
        """Whether a call may go to it now (a probing deployment takes one call at a time)."""
        state = self.state(now)
        return state == DeploymentState.HEALTHY or (
            state == DeploymentState.PROBING and not self.probing
        )

    def begin(self, now: float) -> None:
        """A call is going to it (the probe, if it is probing)."""
        if self.state(now) == DeploymentState.PROBING:
            self.probing = True

    def succeeded(self) -> None:
        self.failures = self.trips = 0
        self.out_until = 0.0
        self.probing = False

    def failed(self, now: float, error: str) -> None:
        """A fault of the deployment; enough of them in a row (or a failed probe) trip it."""
        self.last_error = error
        self.failures += 1
        if self.probing or self.failures >= self.limits.failures_to_trip:
            self.trips += 1
            cooldown = self.limits.cooldown_s * 2 ** (self.trips - 1)
            self.out_until = now + min(self.limits.max_cooldown_s, cooldown)
            self.failures = 0
        self.probing = False

    def rest(self, now: float, seconds: float) -> None:
        """The deployment asked for a pause (429): no calls until then, no fault counted.

        The pause is at most ``cooldown_s``: one call's long ``Retry-After`` (its own retry
        honours it) must not keep a whole deployment out for hours.
        """
        self.out_until = max(self.out_until, now + min(seconds, self.limits.cooldown_s))
        self.probing = False

    def ended(self) -> None:
        """A call ended without telling anything about the deployment (a client's 4xx)."""
        self.probing = False
