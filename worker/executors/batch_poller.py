"""The poller of providers' Batch API jobs: one per worker process, for every open job.

It claims the jobs that are due (its own; and, at once, those of a process that fell silent),
asks each provider how its job is doing, with a backoff per job (``batch.poll_min_s`` doubling
up to ``batch.poll_max_s``), and when a job ends reads its output and error files and finishes
every row it held from its own line:

- an answer finishes the row (named, classified and priced at the ``batch`` path, as every
  deferred answer is: ``app/calls``);
- a line that failed with a retryable error goes back to the queue after its backoff (counted
  as an attempt): into the next job, or another path when its window got short
  (``paths.py``); a final error fails the row as a direct call's would;
- a job that failed, expired, was cancelled or was lost by the provider gives back its
  unfinished rows without counting an attempt: they run again before their window ends;
- output that is not what the Batch API promises gives back every row, counted, under
  ``upstream_batch_bad_output`` (after ``max_attempts`` they fail with that code); a row the
  files say nothing of goes back under ``upstream_batch_line_missing``.

While a job runs, the rows it holds are watched at each poll: a Batch API line whose batch is
being cancelled ends ``cancelled``; a job none of whose rows is live any more (cancelled by
their owners) is cancelled at the provider; and a job still running when its rows' windows
are ``batch.margin_s`` from their end is cancelled, so the rest can run another way in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections import Counter
from typing import Any

import httpx
import orjson

from app.cache.service import Lookup, ResponseCache, cache_of, wanted_for
from app.calls.outcome import Meter, completed
from app.calls.policy import EXPIRED, Window, after_failure
from app.settings import BatchExecutor as BatchConfig
from app.settings import ModelConfig, Settings
from app.store.db import database_unavailable, report_failed_pass
from app.store.outcomes import Outcome
from app.store.upstream_jobs import Finished, GivenBack, HeldRow, UpstreamJob, UpstreamJobStore
from app.upstream.batch_api import CANCELLING, BadOutput, JobState, LineAnswer, ProviderBatches
from app.upstream.client import UpstreamError, error_from_status
from app.upstream.deployment import Deployment
from app.upstream.router import Router
from app.vocabulary import (
    STOPPING_BATCH,
    CacheResult,
    ErrorCode,
    ExecutorKind,
    PriceTier,
    Status,
    UpstreamJobStatus,
    error,
)
from worker.executors.batch import BatchExecutor, job_line, submit
from worker.outcomes import count_finished

log = logging.getLogger("tiergate.batch_poller")

# With no open job, the poller still looks this often for jobs a silent process left.
IDLE_S = 10.0
# A job whose submission failed this many times gives its rows back (counted).
SUBMIT_TRIES = 5
LINE_EXPIRED = Outcome(status=Status.EXPIRED, error=error(ErrorCode.BATCH_EXPIRED))
LINE_CANCELLED = Outcome(status=Status.CANCELLED, error=error(ErrorCode.BATCH_CANCELLED))
# How a job that ended without a row's line explains it.
UNANSWERED = {
    "failed": ErrorCode.UPSTREAM_JOB_FAILED,
    "expired": ErrorCode.UPSTREAM_JOB_EXPIRED,
    "cancelled": ErrorCode.UPSTREAM_JOB_CANCELLED,
}


class BatchPoller:
    """Polls and finishes the open provider jobs of this process (and of dead ones)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: UpstreamJobStore,
        executor: BatchExecutor,
        router: Router,
        meter: Meter,
        cache: ResponseCache | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.router = router
        self.meter = meter
        self.cache = cache
        self._wake = asyncio.Event()
        executor.submitted = self._wake.set

    async def run(self) -> None:
        """Poll until cancelled."""
        silent_s = self.settings.limits.stalled_after_s
        while True:
            wait_s = IDLE_S
            try:
                jobs = await self.store.claim_due(self.executor.owner, silent_s)
                if jobs:
                    await asyncio.gather(*(self._visit(job) for job in jobs))
                    continue
                due = await self.store.next_due_in()
                if due is not None:
                    wait_s = min(IDLE_S, max(0.05, due))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report_failed_pass(log, exc, "polling batch jobs")
                wait_s = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._wake.clear()

    async def _visit(self, job: UpstreamJob) -> None:
        model = self.settings.models.get(job.model)
        deployment = self.router.by_label(job.model, job.deployment)
        if model is None or deployment is None:
            await self._give_back(job, error(ErrorCode.MODEL_NOT_CONFIGURED), counted=True)
            return
        config = deployment.config.batch
        api = self.executor.apis.get(config.api)
        if api is None:
            await self._give_back(job, error(ErrorCode.UPSTREAM_UNAVAILABLE), counted=True)
            return
        try:
            if job.status == UpstreamJobStatus.SUBMITTING or job.upstream_batch_id is None:
                await self._recover(job, deployment, api)
                return
            state = await api.get(deployment, job.upstream_batch_id)
            if state is None:
                log.warning("job %s: the provider lost %s", job.id, job.upstream_batch_id)
                await self._give_back(job, error(ErrorCode.UPSTREAM_JOB_LOST))
            elif not state.ended:
                await self._watch(job, deployment, api, state)
            else:
                await self._collect(job, model, deployment, api, state)
        except UpstreamError as exc:
            log.warning("job %s: %s", job.id, exc)
            await self.store.polled(job.id, None, _next_poll_s(job, config), str(exc))
        except BadOutput as exc:
            log.warning("job %s: unreadable output: %s", job.id, exc)
            bad = {"code": ErrorCode.UPSTREAM_JOB_BAD_OUTPUT, "message": str(exc)}
            await self._give_back(job, bad, counted=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if database_unavailable(exc):
                raise
            # A bug must not stop the other jobs' polls, nor spin on this one: it waits.
            log.exception("job %s: polling failed", job.id)
            await self.store.polled(job.id, None, config.poll_max_s, f"{type(exc).__name__}")

    async def _recover(
        self, job: UpstreamJob, deployment: Deployment, api: ProviderBatches
    ) -> None:
        """A job whose submission did not finish: found at the provider, or submitted (again:
        its upload is reused when it was stored)."""
        config = deployment.config.batch
        held = await self.store.held(job.id)
        found = await api.find(
            deployment,
            tag=job.id,
            since=job.created_at,
            rows=job.rows,
            exclude=await self.store.provider_ids(job.deployment, job.created_at),
        )
        if found is not None:
            log.info("job %s: found at the provider as %s", job.id, found.id)
            await self.store.submitted(job.id, found.id, found.status, config.poll_min_s)
            return
        if not held:
            await self.store.settle(job.id, [], [], status=None, counts={})
            return
        if job.polls >= SUBMIT_TRIES:
            failed = {
                "code": ErrorCode.UPSTREAM_JOB_FAILED,
                "message": f"The provider refused the job {SUBMIT_TRIES} times.",
            }
            await self._give_back(job, failed, counted=True, held=held)
            return
        await submit(
            self.store,
            api,
            deployment,
            job=job.id,
            endpoint=job.endpoint,
            lines=[job_line(deployment, row.id, job.endpoint, row.body) for row in held],
            file_id=job.upstream_file_id,
            metrics=self.meter.metrics,
        )

    async def _watch(
        self, job: UpstreamJob, deployment: Deployment, api: ProviderBatches, state: JobState
    ) -> None:
        """A running job: its cancelled lines end; a job with nothing left to do, or too
        close to its rows' windows, is cancelled at the provider."""
        config = deployment.config.batch
        watch = await self.store.watch(job.id, LINE_CANCELLED)
        if watch.stopped:
            stored = await self.store.finish(watch.stopped)
            count_finished(self.meter.metrics, job.model, watch.stopped, stored)
        now = dt.datetime.now(dt.UTC)
        if state.status not in CANCELLING:
            if watch.soonest is None:
                log.info("job %s: no live row left; cancelling it at the provider", job.id)
                state = await api.cancel(deployment, state.id) or state
            elif watch.soonest - dt.timedelta(seconds=config.margin_s) < now:
                log.warning("job %s: its rows' windows end soon; cancelling it", job.id)
                state = await api.cancel(deployment, state.id) or state
        await self.store.polled(job.id, state.status, _next_poll_s(job, config))

    async def _collect(
        self,
        job: UpstreamJob,
        model: ModelConfig,
        deployment: Deployment,
        api: ProviderBatches,
        state: JobState,
    ) -> None:
        """An ended job: every row it holds finished or given back from its line."""
        held = await self.store.held(job.id)
        lines = {row.id: job_line(deployment, row.id, job.endpoint, row.body) for row in held}
        answers = {a.custom_id: a for a in await api.answers(deployment, state, lines)}
        finished: list[Finished] = []
        given_back: list[GivenBack] = []
        counts: Counter[str] = Counter()
        for row in held:
            answer = answers.pop(row.id, None)
            result = self._judge(row, answer, model, deployment, state)
            if isinstance(result, Finished):
                finished.append(result)
                counts[str(result.outcome.status)] += 1
            else:
                given_back.append(result)
                counts["again"] += 1
        if answers:
            counts["unknown_lines"] = len(answers)
            log.warning("job %s: %d lines name no row it holds", job.id, len(answers))
        log.info("job %s %s: %s", job.id, state.status, dict(counts))
        stored = await self.store.settle(
            job.id, finished, given_back, status=state.status, counts=dict(counts)
        )
        count_finished(self.meter.metrics, job.model, finished, stored)
        self._remember(model, held, finished)

    def _remember(self, model: ModelConfig, held: list[HeldRow], finished: list[Finished]) -> None:
        """The answers of completed rows kept by the model's response cache, as a direct
        call's are (their lookup missed before they were sent; no prompt embedding is kept,
        so a later call finds them by exact match only)."""
        if self.cache is None or cache_of(model) is None:
            return
        completed = {f.id: f.outcome for f in finished if f.outcome.status == Status.COMPLETED}
        for row in held:
            outcome = completed.get(row.id)
            if outcome is None or not wanted_for(row):
                continue
            key = self.cache.key_of(row.endpoint, row.body, model)
            self.cache.remember(
                Lookup(CacheResult.MISS, key),
                owner=row.owner_key_id,
                model=model,
                endpoint=row.endpoint,
                request=row.body,
                answer=outcome.response_body,
            )

    def _judge(
        self,
        row: HeldRow,
        answer: LineAnswer | None,
        model: ModelConfig,
        deployment: Deployment,
        state: JobState,
    ) -> Finished | GivenBack:
        """How one held row ends, from its line (or its line's absence)."""
        line = row.batch_id is not None
        if line and row.batch_status in STOPPING_BATCH:
            return Finished(row.id, row.attempts, LINE_CANCELLED, row.batch_id)
        background = row.background
        served = deployment.label(model.name)
        if answer is None or answer.status is None:
            if answer is not None and answer.error is not None:
                reason = answer.error
            elif state.status == "completed":
                reason = error(ErrorCode.UPSTREAM_JOB_LINE_MISSING)
                return GivenBack(row.id, row.attempts, reason, deployment=served, counted=True)
            else:
                code = UNANSWERED.get(state.status, ErrorCode.UPSTREAM_JOB_FAILED)
                reason = {"code": code, "message": state.error or error(code)["message"]}
            return GivenBack(row.id, row.attempts, reason, deployment=served)
        if answer.status < 400:
            outcome = completed(
                model, deployment, answer.status, answer.body, "", ExecutorKind.BATCH
            )
            tier = PriceTier.BATCH if line else row.service_tier
            outcome = self.meter.priced(model.name, tier, row.key_name or "", row.body, outcome)
            return Finished(row.id, row.attempts, outcome, row.batch_id, background)
        exc = error_from_status(answer.status, httpx.Headers(), orjson.dumps(answer.body))
        attempt = after_failure(exc, row.attempts, self._window(model, row))
        if attempt.outcome is not None:
            outcome = dataclasses.replace(
                attempt.outcome, deployment=served, executor=ExecutorKind.BATCH
            )
            return Finished(row.id, row.attempts, outcome, row.batch_id, background)
        assert attempt.error is not None
        return GivenBack(
            row.id,
            row.attempts,
            attempt.error,
            delay_s=attempt.retry_in_s or 0.0,
            deployment=served,
            counted=True,
        )

    def _window(self, model: ModelConfig, row: HeldRow) -> Window:
        limits = self.settings.limits
        return Window(
            expires_at=row.expires_at,
            max_attempts=model.max_attempts,
            base_s=limits.retry_base_s,
            max_s=limits.retry_max_s,
            expired=LINE_EXPIRED if row.batch_id is not None else EXPIRED,
        )

    async def _give_back(
        self,
        job: UpstreamJob,
        reason: dict[str, Any],
        *,
        counted: bool = False,
        held: list[HeldRow] | None = None,
    ) -> None:
        """Every row the job holds runs again (another job, or another path); the job ends."""
        rows = held if held is not None else await self.store.held(job.id)
        given = [
            GivenBack(row.id, row.attempts, reason, deployment=job.deployment, counted=counted)
            for row in rows
        ]
        log.info("job %s: %d rows run again (%s)", job.id, len(given), reason["code"])
        await self.store.settle(
            job.id, [], given, status=None, counts={"again": len(given)}, error=reason["code"]
        )


def _next_poll_s(job: UpstreamJob, config: BatchConfig) -> float:
    return float(min(config.poll_max_s, config.poll_min_s * 2 ** min(job.polls, 30)))
