"""The ``direct`` executor: one call per row to the deployment's realtime endpoint.

Right for capacity the user owns (vLLM, SGLang, llama.cpp), where tiergate itself makes
deferred work give way to realtime calls. Each call runs under the model's per-process cap
(``flex_concurrency``), shared fairly between keys (``worker/fair_gate.py``); the deployment is
chosen, the outcome classified and priced by the call core (``app/calls``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from app.calls.outcome import Meter, completed, names
from app.calls.policy import Attempt, Window, after_failure, fault_name, rule_for
from app.calls.routing import deferred_deployment, ended_badly
from app.settings import ModelConfig, Settings
from app.upstream.client import UpstreamClient, UpstreamError
from app.upstream.router import NoCapacity, Router
from app.vocabulary import ErrorCode, error
from worker.executors.base import Work
from worker.fair_gate import FairGate
from worker.streaming import stream_call


class DirectExecutor:
    """Calls the deployment once per row, under per-model caps; one per worker process."""

    def __init__(
        self, *, settings: Settings, upstream: UpstreamClient, router: Router, meter: Meter
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.router = router
        self.meter = meter
        # Per-model cap on concurrent upstream calls from this worker process, shared fairly
        # between keys; ``weights`` holds the keys whose weight is not 1.
        self._slots = {
            name: FairGate(model.flex_concurrency) for name, model in settings.models.items()
        }
        self.weights: dict[str, float] = {}

    async def execute(self, model: ModelConfig, work: Work) -> Attempt:
        """One upstream call for ``work`` under its model's cap, classified.

        Waiting for a slot can take a while: if the window passed meanwhile the call is not
        made (``work.expired``), nor if ``work.stop`` was set (``work.stopped``).
        """
        async with self._slots[model.name].slot(work.key, self.weights.get(work.key, 1.0)):
            if work.stop is not None and work.stop.is_set() and work.stopped is not None:
                return Attempt(work.stopped)
            if dt.datetime.now(dt.UTC) >= work.expires_at:
                return Attempt(work.expired)
            try:
                deployment = await deferred_deployment(self.router, model, work.pin, work.last)
            except NoCapacity as exc:  # deferred work is never refused for this: later
                return Attempt(
                    retry_in_s=exc.retry_after_s,
                    error=error(ErrorCode.NO_CAPACITY),
                    counted=False,
                )
            served = deployment.label(model.name)
            try:
                if work.events is None:
                    reply = await self.upstream.call(deployment, work.endpoint, work.body)
                else:
                    reply = await stream_call(
                        self.upstream,
                        deployment,
                        work.endpoint,
                        work.body,
                        work.events,
                        names(model, deployment),
                    )
            except UpstreamError as exc:
                ended_badly(
                    self.router,
                    deployment,
                    rule_for(exc),
                    fault=fault_name(exc),
                    retry_after_s=exc.retry_after_s,
                    realtime=False,
                )
                failure = after_failure(exc, work.attempt, self._window(work))
                outcome = failure.outcome
                return dataclasses.replace(
                    failure,
                    deployment=served,
                    outcome=outcome and dataclasses.replace(outcome, deployment=served),
                )
            except BaseException:
                self.router.end(deployment, telling=False, realtime=False)
                raise
            self.router.end(deployment, realtime=False)
        outcome = completed(model, deployment, reply.status, reply.body, reply.text)
        outcome = self.meter.priced(model.name, work.tier, work.key, work.body, outcome)
        return Attempt(outcome, deployment=served)

    def _window(self, work: Work) -> Window:
        limits = self.settings.limits
        return Window(
            expires_at=work.expires_at,
            max_attempts=self.settings.models[work.model].max_attempts,
            base_s=limits.retry_base_s,
            max_s=limits.retry_max_s,
            expired=work.expired,
        )
