"""What one process knows of an engine's own load, and how many deferred calls that allows.

The engine reader (``engine_reader.py``) hands each reading of the engine's ``/metrics`` to
:meth:`EngineWatch.read`, which re-decides how many deferred calls the process may have in
flight:

* the engine has room (no more than ``max_waiting`` requests waiting, its KV cache used below
  ``max_kv_cache``): ``ramp`` more than it has now;
* its KV cache is full enough but nothing extra waits: what it has (no more starts);
* more than ``max_waiting`` wait: what it has less that excess (whoever queued, the process
  gives back as many slots as are wanted; every reading repeats it).

So deferred work fills what the engine leaves, whoever else loads it, and backs off within a
reading when the engine starts queueing.

A reading that fails, or metrics that lie (garbage, missing series, a reading older than three
intervals), make the watch unusable: the deployment falls back to its declared ``capacity``
rules and says so (``state()``: ``tiergate deployments``, ``/metrics``, the log).
Realtime calls never consult the watch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.settings import DeploymentConfig, EngineLoad
from app.upstream.engine_metrics import EngineReading
from app.vocabulary import CallClass, EngineKind

# A deployment's engine refused the priority field: calls go without it for this long, then
# try it again (the engine may have been restarted with its priority scheduler on).
PRIORITY_RETRY_S = 60.0
# A reading is trusted for this many intervals.
STALE_AFTER_READS = 3


@dataclass
class EngineWatch:
    """The engine's last reading as this process saw it, and the deferred calls it allows."""

    kind: EngineKind
    config: EngineLoad
    reading: EngineReading | None = None
    read_at: float = 0.0
    error: str | None = None
    reads: int = 0
    failures: int = 0
    # Deferred calls this process may have in flight to the deployment (see the module doc).
    limit: int = 0
    priority_refused_until: float = 0.0
    priority_refusals: int = 0
    _busy: bool = field(default=False, repr=False)

    def read(self, reading: EngineReading, now: float, deferred_in_flight: int) -> bool:
        """Take a reading; whether the engine has room for more deferred calls."""
        self.reading, self.read_at, self.error = reading, now, None
        self.reads += 1
        self._busy = not self.has_room(reading)
        excess = reading.waiting - self.config.max_waiting
        if excess > 0:
            self.limit = max(0, deferred_in_flight - excess)
        elif self._busy:
            self.limit = deferred_in_flight
        else:
            self.limit = deferred_in_flight + self.config.ramp
        return not self._busy

    def has_room(self, reading: EngineReading) -> bool:
        """Whether a reading leaves room: few enough waiting, KV cache under the threshold."""
        if reading.waiting > self.config.max_waiting:
            return False
        return reading.kv_cache is None or reading.kv_cache < self.config.max_kv_cache

    def failed(self, reason: str) -> bool:
        """A read failed or the metrics lied; whether that is news (it was usable before)."""
        news = self.error is None
        self.error = reason
        self.failures += 1
        return news

    def usable(self, now: float) -> bool:
        """Whether the last reading is good and recent enough to go by."""
        stale_s = STALE_AFTER_READS * self.config.read_every_s + self.config.timeout_s
        return self.reads > 0 and self.error is None and now - self.read_at <= stale_s

    def room(self, now: float, deferred_in_flight: int) -> int | None:
        """More deferred calls this process may start now (None: the metrics are unusable,
        declared capacity rules)."""
        if not self.usable(now):
            return None
        return self.limit - deferred_in_flight

    def _why_not(self) -> str:
        if self.error is not None:
            return self.error
        return "not read yet" if self.reads == 0 else "the last reading is stale"

    def refuse_priority(self, now: float) -> bool:
        """The engine refused the priority field; whether that is news."""
        news = not self.priority_refused(now)
        self.priority_refused_until = now + PRIORITY_RETRY_S
        self.priority_refusals += 1
        return news

    def priority_refused(self, now: float) -> bool:
        """Whether calls go without the priority field now."""
        return now < self.priority_refused_until

    def state(self, now: float) -> dict[str, Any]:
        """The watch as ``tiergate deployments``, the dashboard and ``/metrics`` show it."""
        reading = self.reading if self.usable(now) else None
        return {
            "kind": str(self.kind),
            "ok": reading is not None,
            "running": reading.running if reading else None,
            "waiting": reading.waiting if reading else None,
            "kv_cache": reading.kv_cache if reading else None,
            "room": reading is not None and not self._busy,
            "deferred_limit": self.limit if reading else None,
            "error": None if reading else self._why_not(),
            "reads": self.reads,
            "failures": self.failures,
            "priority_refused": self.priority_refused(now),
            "priority_refusals": self.priority_refusals,
        }


def engine_summary(
    deployment: DeploymentConfig, states: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """A deployment's engine as the live processes read it (``states``: their published
    :meth:`EngineWatch.state`), for ``tiergate deployments`` and the dashboard: the first
    usable reading, else the first process's reason; ``text`` for a table cell. None without
    ``engine:``."""
    if deployment.engine == EngineKind.NONE:
        return None
    usable = next((e for e in states if e["ok"]), None)
    state = usable or (states[0] if states else None)
    refused = any(e["priority_refused"] for e in states)
    if state is None:
        text = f"{deployment.engine}: no process reading its metrics"
    elif usable is not None:
        kv = "" if usable["kv_cache"] is None else f", KV {usable['kv_cache']:.0%}"
        text = f"{deployment.engine}: {usable['running']} running, {usable['waiting']} waiting{kv}"
    else:
        text = f"{deployment.engine}: metrics unusable ({state['error']}); declared capacity rules"
    priorities = None
    if deployment.priority is not None:
        priorities = {str(call): deployment.priority.of(call) for call in CallClass}
        shown = ", ".join(f"{k}={v}" for k, v in priorities.items())
        text += "; priority refused" if refused else f"; priority {shown}"
    return {
        "kind": str(deployment.engine),
        "metrics_url": deployment.engine_metrics_url(),
        "priority": priorities,
        "priority_refused": refused,
        "state": state,
        "text": text,
    }
