"""Which deployment takes a call: balancing, health, fallback models, pinning, capacity.

Each process routes with what it observes itself (its own calls in flight, its own circuit
per deployment) and learns other processes' cool-downs through the ``processes`` table
(``app/upstream/fleet_view.py``).
Balancing is the power of two choices over a weighted draw: two deployments drawn by weight,
the one with fewer calls in flight per unit of weight wins (the first drawn on a tie), so
idle traffic splits by weight and busy traffic avoids the loaded deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from app.settings import Settings
from app.upstream.deployment import Deployment, Fleet
from app.vocabulary import DeploymentState


@dataclass
class NoCapacity(Exception):
    """No deployment (nor fallback) could take the call before the deadline."""

    retry_after_s: float


class UnknownDeployment(Exception):
    """A pin names no deployment of the model."""


class Router:
    """The fleets of every model, and the choice of a deployment for each call."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        limits = settings.limits.health
        self.fleets = {
            name: Fleet(model, [Deployment.of(model, d, limits) for d in model.deployments])
            for name, model in settings.models.items()
        }
        self.clock = clock
        self.rng = rng or random.Random()
        self._changed: asyncio.Event | None = None
        self._chains: dict[str, list[Fleet]] = {}  # the config is fixed: computed once

    def chain(self, asked: str) -> list[Fleet]:
        """The model's fleet, then its fallbacks' (depth first, each model once)."""
        if (known := self._chains.get(asked)) is not None:
            return known
        out: list[Fleet] = []

        def visit(name: str) -> None:
            fleet = self.fleets.get(name)
            if fleet is None or fleet in out:
                return
            out.append(fleet)
            for fallback in fleet.model.fallbacks:
                visit(fallback)

        visit(asked)
        self._chains[asked] = out
        return out

    def candidates(self, asked: str, pin: str | None = None) -> list[Deployment]:
        """Every deployment that may serve a call to ``asked``, in fallback order."""
        if pin is not None:
            pinned = self.fleets[asked].named(pin)
            if pinned is None:
                raise UnknownDeployment(pin)
            return [pinned]
        return [d for fleet in self.chain(asked) for d in fleet.deployments]

    def by_label(self, asked: str, label: str | None) -> Deployment | None:
        """The deployment a row names (``gpu-a``, or ``llama-8b/gpu-a`` for a fallback)."""
        if not label:
            return None
        model, _, name = label.rpartition("/")
        fleet = self.fleets.get(model or asked)
        return fleet.named(name) if fleet is not None else None

    def pick(
        self,
        asked: str,
        *,
        pin: str | None = None,
        avoid: Iterable[Deployment] = (),
        realtime: bool = True,
    ) -> Deployment | None:
        """A usable deployment now, from the first model of the chain that has one.

        A deferred call (``realtime=False``) also needs room under the deployment's
        ``capacity`` after the realtime calls of every process: flex yields to realtime.
        """
        now = self.clock()
        avoided = set(avoid) if avoid else ()
        if pin is not None:
            fleets = [self.candidates(asked, pin)]
        else:
            fleets = [fleet.deployments for fleet in self.chain(asked)]
        for deployments in fleets:
            usable = [
                d
                for d in deployments
                if d not in avoided and d.health.usable(now) and d.has_room(now, realtime=realtime)
            ]
            if usable:
                return self._choose(usable)
        return None

    def _choose(self, usable: list[Deployment]) -> Deployment:
        if len(usable) == 1:
            return usable[0]
        total = sum(d.config.weight for d in usable)
        first, second = self._draw(usable, total), self._draw(usable, total)
        return first if _load(first) <= _load(second) else second

    def _draw(self, usable: list[Deployment], total: float) -> Deployment:
        """One deployment, drawn with probability proportional to its weight."""
        point = self.rng.random() * total
        for deployment in usable:
            point -= deployment.config.weight
            if point < 0:
                return deployment
        return usable[-1]

    def begin(self, deployment: Deployment, *, realtime: bool = True) -> None:
        """A call to ``deployment`` starts (its probe, if it is probing)."""
        now = self.clock()
        deployment.begin(now, realtime=realtime)
        deployment.health.begin(now)

    def end(
        self,
        deployment: Deployment,
        *,
        fault: str | None = None,
        rest_s: float | None = None,
        telling: bool = True,
        realtime: bool = True,
    ) -> None:
        """A call ends: ``fault`` counts against the deployment, ``rest_s`` rests it (429),
        neither is a success; ``telling=False`` says nothing either way (a cancelled call)."""
        deployment.end(realtime=realtime)
        now = self.clock()
        if fault is not None:
            deployment.health.failed(now, fault)
        elif rest_s is not None:
            deployment.health.rest(now, rest_s)
        elif telling:
            deployment.health.succeeded()
        else:
            deployment.health.ended()
        self.wake()

    async def acquire(
        self,
        asked: str,
        *,
        pin: str | None = None,
        tried: Iterable[Deployment] = (),
        deadline: float,
        realtime: bool = True,
    ) -> Deployment | None:
        """A deployment not yet ``tried``, waiting for one until ``deadline``.

        ``None`` when every candidate was tried; ``NoCapacity`` when some were not but none
        became usable in time. The caller must ``end`` what it gets.
        """
        tried = set(tried)
        while True:
            chosen = self.pick(asked, pin=pin, avoid=tried, realtime=realtime)
            if chosen is not None:
                self.begin(chosen, realtime=realtime)
                return chosen
            left = [d for d in self.candidates(asked, pin) if d not in tried]
            if not left:
                return None
            now = self.clock()
            back_in = [d.health.out_until - now for d in left if d.health.out_until > now]
            if now >= deadline:
                raise NoCapacity(retry_after_s=max(1.0, min(back_in, default=1.0)))
            # Calls ending wake waiters; a deferred one also looks again each second, as the
            # realtime peak it yields to fades.
            wait_s = min([deadline - now, *back_in, *([] if realtime else [1.0])])
            changed = self._event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait_s)

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def wake(self) -> None:
        """Wake the calls waiting for a deployment to look again (a call ended, an engine
        reported room)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def snapshot(self) -> list[dict[str, Any]]:
        """Every deployment's state, for ``/metrics`` and the ``processes`` table."""
        now = self.clock()
        return [d.snapshot(now) for fleet in self.fleets.values() for d in fleet.deployments]

    def learn(self, others: list[list[dict[str, Any]]]) -> None:
        """Take the other processes' calls in flight per deployment (what flex yields to)
        and the cool-downs they are sitting out, from their snapshots.

        Only a cool-down a process earned by its own faults (``trips``) is taken, and only
        as a rest until the same moment: what was learnt is not passed on as news, and no
        process pays the connect timeouts of a deployment another one has found down.
        """
        now, wall = self.clock(), time.time()
        loads: dict[Deployment, tuple[int, int]] = {}
        for snapshot in others:
            for seen in snapshot:
                fleet = self.fleets.get(seen.get("model", ""))
                deployment = fleet.named(seen.get("deployment", "")) if fleet else None
                if deployment is None:
                    continue
                realtime, deferred = loads.get(deployment, (0, 0))
                loads[deployment] = (
                    realtime + int(seen.get("realtime_in_flight") or 0),
                    deferred + int(seen.get("deferred_in_flight") or 0),
                )
                until = seen.get("out_until")
                if not seen.get("trips") or not until or until <= wall:
                    continue
                if deployment.health.state(now) == DeploymentState.HEALTHY:
                    deployment.health.rest(now, until - wall)
                    deployment.health.last_error = seen.get("last_error")
        for fleet in self.fleets.values():
            for deployment in fleet.deployments:
                deployment.others_realtime, deployment.others_deferred = loads.get(
                    deployment, (0, 0)
                )


def _load(deployment: Deployment) -> float:
    """Calls in flight per unit of weight."""
    return deployment.in_flight / deployment.config.weight
