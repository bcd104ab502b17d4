"""The ``direct`` and ``flex`` executors: one call per row.

``direct`` calls the deployment's realtime endpoint: right for capacity the user owns (vLLM,
SGLang, llama.cpp), where tiergate itself makes deferred work give way to realtime calls.
``flex`` sends the same call with ``service_tier: "flex"`` to a provider's own flex tier
(OpenAI's: about half the price, slower, sometimes without capacity) with the deployment's
long flex timeout (``flex: {timeout_s}``, 15 minutes by default); the provider's "429 resource
unavailable" means "later": the row waits for a retry that does not use up one of its
``max_attempts`` (only its window bounds it), and the deployment's health is not told (its
realtime calls are unaffected).

Each call runs under the model's per-process cap (``flex_concurrency``), shared fairly between
keys (``worker/fair_gate.py``) and by both paths; the deployment is chosen, the outcome
classified and priced by the call core (``app/calls``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from typing import Any

from app import tracing
from app.calls.outcome import Meter, completed, names
from app.calls.policy import Attempt, Window, after_failure, backoff_s, fault_name, rule_for
from app.calls.routing import deferred_deployment, ended_badly
from app.openai.usage import usage_of
from app.settings import ModelConfig, Settings
from app.store.outcomes import Outcome
from app.upstream.client import UpstreamClient, UpstreamError
from app.upstream.router import NoCapacity, Router
from app.vocabulary import ErrorCode, ExecutorKind, Status, error
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
        return await self.call(model, work, flex=False)

    async def call(self, model: ModelConfig, work: Work, *, flex: bool) -> Attempt:
        """One call for ``work``, to the provider's flex tier if ``flex``."""
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
            tier = FLEX_TIER if flex else None
            timeout_s = deployment.config.flex.timeout_s if flex else None
            try:
                traced = (
                    tracing.client_span(
                        tracing.operation(work.endpoint),
                        deployment.target_model,
                        {
                            "tiergate.deployment": served,
                            "gen_ai.provider.name": tracing.provider(deployment.config.engine),
                            "tiergate.executor": ExecutorKind.FLEX if flex else ExecutorKind.DIRECT,
                            "tiergate.tier": work.tier,
                        },
                    )
                    if tracing.tracer is not None
                    else NOT_TRACED
                )
                with traced as span:
                    if work.events is None:
                        reply = await self.upstream.call(
                            deployment,
                            work.endpoint,
                            work.body,
                            timeout_s=timeout_s,
                            tier=tier,
                            call=work.call,
                        )
                    else:
                        reply = await stream_call(
                            self.upstream,
                            deployment,
                            work.endpoint,
                            work.body,
                            work.events,
                            names(model, deployment),
                            tier=tier,
                            call=work.call,
                        )
                    if span is not None:
                        tracing.annotate(span, reply_attributes(reply.body))
                        tracing.capture(span, work.endpoint, work.body, reply.body)
            except UpstreamError as exc:
                if flex and flex_unavailable(exc):
                    self.router.end(deployment, realtime=False)
                    return self._flex_later(exc, work, served)
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
        path = ExecutorKind.FLEX if flex else ExecutorKind.DIRECT
        outcome = completed(model, deployment, reply.status, reply.body, reply.text, path)
        outcome = self.meter.priced(model.name, work.tier, work.key, work.body, outcome)
        return Attempt(outcome, deployment=served)

    def _flex_later(self, exc: UpstreamError, work: Work, served: str) -> Attempt:
        """The flex tier had no room: try again after a backoff, not counted as an attempt,
        while the window allows it."""
        window = self._window(work)
        delay = backoff_s(work.attempt, exc.retry_after_s, window.base_s, window.max_s)
        if dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay) >= work.expires_at:
            assert work.expired.error is not None
            return Attempt(
                Outcome(
                    status=Status.EXPIRED,
                    error={
                        "code": work.expired.error["code"],
                        "message": "The provider's flex tier had no capacity before the"
                        f" window ended. Last error: {exc}",
                    },
                    deployment=served,
                    executor=ExecutorKind.FLEX,
                )
            )
        return Attempt(
            retry_in_s=delay,
            error={"code": ErrorCode.FLEX_UNAVAILABLE, "message": exc.message},
            deployment=served,
            counted=False,
        )

    def _window(self, work: Work) -> Window:
        limits = self.settings.limits
        return Window(
            expires_at=work.expires_at,
            max_attempts=self.settings.models[work.model].max_attempts,
            base_s=limits.retry_base_s,
            max_s=limits.retry_max_s,
            expired=work.expired,
        )


FLEX_TIER = "flex"
NOT_TRACED: contextlib.nullcontext[None] = contextlib.nullcontext()


def reply_attributes(body: Any) -> dict[str, Any]:
    """The GenAI attributes of an upstream's answer (its model and usage; none of its text)."""
    if not isinstance(body, dict):
        return {}
    usage = usage_of(body)
    return {
        "gen_ai.response.model": body.get("model"),
        "gen_ai.usage.input_tokens": usage.input,
        "gen_ai.usage.output_tokens": usage.output,
    }


# A 429 that says the account is out of money is no capacity shortage: it is final as usual.
NOT_CAPACITY = frozenset({"insufficient_quota"})


def flex_unavailable(exc: UpstreamError) -> bool:
    """Whether a flex call's failure is the flex tier's "no capacity now" (a 429)."""
    return exc.status == 429 and exc.code not in NOT_CAPACITY


class FlexExecutor:
    """The ``flex`` executor: the direct executor's calls, sent to the provider's flex tier
    (it shares the direct executor's per-model caps)."""

    def __init__(self, direct: DirectExecutor) -> None:
        self.direct = direct

    async def execute(self, model: ModelConfig, work: Work) -> Attempt:
        """One flex call for ``work``, classified."""
        return await self.direct.call(model, work, flex=True)
