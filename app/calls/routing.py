"""Choosing the deployment a call goes to, and telling the router how it went.

Both ways a call picks a deployment live here, over the shared ``Router`` (weights, health,
``max_concurrency``, fallback models in the order the config gives):

- a realtime call fails over at once (:class:`Failover`): a deployment that failed before any
  byte reached the client is left for the next candidate, within the model's
  ``max_attempts`` calls and ``route_timeout_s`` of waiting for room;
- a deferred attempt makes one call (:func:`deferred_deployment`), preferably not to the
  deployment that failed its previous attempt, and waits for room rather than fail (deferred
  work is never refused for want of capacity).
"""

from __future__ import annotations

from app.calls.policy import Health, Rule
from app.settings import ModelConfig
from app.upstream.deployment import Deployment
from app.upstream.router import NoCapacity, Router

# How long a deferred attempt waits for a deployment with room before going back to the queue.
DEFERRED_ROUTE_WAIT_S = 30.0


class Failover:
    """The deployments one realtime call tries in turn."""

    def __init__(self, router: Router, model: ModelConfig, pin: str | None) -> None:
        self.router = router
        self.model = model
        self.pin = pin
        self.deadline = router.clock() + model.route_timeout_s
        self.tried: list[Deployment] = []

    async def next(self) -> Deployment | None:
        """The next deployment to try, begun (the caller must ``end`` it); None when none is
        left. ``NoCapacity`` when none could be tried at all."""
        if len(self.tried) >= self.model.max_attempts:
            return None
        try:
            deployment = await self.router.acquire(
                self.model.name, pin=self.pin, tried=self.tried, deadline=self.deadline
            )
        except NoCapacity:
            if not self.tried:
                raise
            return None
        if deployment is not None:
            self.tried.append(deployment)
        return deployment


async def deferred_deployment(
    router: Router, model: ModelConfig, pin: str | None, last: str | None
) -> Deployment:
    """The deployment a deferred attempt calls, begun; ``NoCapacity`` when none could take a
    call for a while (the attempt goes back to the queue without counting)."""
    avoid = router.by_label(model.name, last)
    chosen = router.pick(model.name, pin=pin, avoid=[avoid] if avoid else [], realtime=False)
    if chosen is not None:
        router.begin(chosen, realtime=False)
        return chosen
    # Waiting here (the model's slot held) picks up room the moment it frees.
    wait_s = max(model.route_timeout_s, DEFERRED_ROUTE_WAIT_S)
    found = await router.acquire(
        model.name, pin=pin, deadline=router.clock() + wait_s, realtime=False
    )
    assert found is not None  # nothing was tried yet
    return found


def ended_badly(
    router: Router,
    deployment: Deployment,
    rule: Rule,
    *,
    fault: str,
    retry_after_s: float | None,
    realtime: bool,
) -> None:
    """End a failed call on ``deployment``, telling its health what ``rule`` says: a 429
    rests it (for ``Retry-After``, else 1 s), a fault counts against it (``fault`` names it),
    a client error says nothing against it."""
    if rule.health is Health.REST:
        router.end(deployment, rest_s=retry_after_s or 1.0, realtime=realtime)
    elif rule.health is Health.FAULT:
        router.end(deployment, fault=fault, realtime=realtime)
    else:
        router.end(deployment, realtime=realtime)
