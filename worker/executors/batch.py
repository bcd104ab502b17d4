"""The ``batch`` executor: deferred rows gathered into jobs of a provider's Batch API.

Rows handed over (flex and background requests, Batch API lines, any key) are gathered per
model, deployment and endpoint, for ``batch.gather_s`` seconds or until ``batch.max_lines``;
then, in order:

1. the job's row is inserted and the rows attached to it, one statement
   (``app/store/upstream_jobs.py``): from here on only the job's poller finishes them;
2. the input file is uploaded and its id stored;
3. the job is created at the provider, tagged with tiergate's job id in its metadata, and its
   id stored.

A process that dies anywhere in between leaves a ``submitting`` job that another process's
poller takes over (``batch_poller.py``): it first looks for the tag among the provider's
jobs, so a job is never created twice. The executor answers ``None``: the row is taken over.

Lines the provider's format cannot express (``RefusedLines``, before anything is sent: a
chat feature Anthropic's Messages lack) fail their rows at once, as a direct call refused for
the same reason would (400, ``untranslatable_request``), the job's row count becoming the
rest's; the rest are submitted (none left: the job ends unsubmitted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.calls.policy import failed
from app.ids import new_id
from app.metrics import Metrics
from app.settings import ModelConfig, Settings
from app.store.db import database_unavailable
from app.store.upstream_jobs import Finished, UpstreamJobStore
from app.upstream.anthropic_batches import AnthropicBatches
from app.upstream.batch_api import JobLine, ProviderBatches, RefusedLines
from app.upstream.client import UpstreamClient, UpstreamError, prepare_body
from app.upstream.deployment import Deployment
from app.upstream.openai_batches import OpenAIBatches
from app.upstream.router import Router
from app.vocabulary import BatchApi, ErrorCode, ExecutorKind, Status
from worker.executors.base import Work
from worker.outcomes import count_finished

log = logging.getLogger("tiergate.batch_executor")

STORE_RETRY_S = 1.0


@dataclass
class Gathering:
    """Rows waiting to be submitted together; ``attached`` is done once their job holds
    them (or they were found given back meanwhile)."""

    works: list[Work] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    attached: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class BatchExecutor:
    """Gathers rows into provider jobs; one per worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        upstream: UpstreamClient,
        router: Router,
        store: UpstreamJobStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.store = store
        self.metrics = metrics
        self.apis: dict[BatchApi, ProviderBatches] = {BatchApi.OPENAI: OpenAIBatches(upstream)}
        self.apis[BatchApi.ANTHROPIC] = AnthropicBatches(upstream)
        self.owner = ""  # the worker process (its presence id), set before work comes
        self.submitted: Callable[[], None] = lambda: None  # wakes the poller
        self._gathering: dict[tuple[str, str, str], Gathering] = {}
        self._unattached: dict[str, asyncio.Future[None]] = {}
        self._submitting: set[asyncio.Task[None]] = set()

    def speaks(self, api: BatchApi) -> bool:
        """Whether this executor can send jobs to a provider of ``api``."""
        return api in self.apis

    async def execute(self, model: ModelConfig, work: Work) -> None:
        """Gather ``work`` for its deployment's next job; the row is taken over."""
        assert work.pin is not None  # the path chose the deployment
        key = (model.name, work.pin, work.endpoint)
        gathering = self._gathering.get(key)
        if gathering is None:
            gathering = self._gathering[key] = Gathering()
        gathering.works.append(work)
        self._unattached[work.id] = gathering.attached
        config = self._deployment(model.name, work.pin).config.batch
        if len(gathering.works) >= config.max_lines:
            self._flush(key)
        elif gathering.timer is None:
            loop = asyncio.get_running_loop()
            gathering.timer = loop.call_later(config.gather_s, self._flush, key)

    async def attached(self, ids: list[str]) -> None:
        """Wait until the rows ``ids`` handed over here are held by their jobs (a Batch API
        run job waits for its lines: until then, only it answers for them)."""
        waiting = {self._unattached[i] for i in ids if i in self._unattached}
        if waiting:
            await asyncio.wait([asyncio.shield(f) for f in waiting])

    async def stop(self) -> None:
        """Stop gathering; what was gathered and not attached goes back with the worker's
        other claimed rows (the dispatcher gives them back, the batch sweep its lines)."""
        for gathering in self._gathering.values():
            if gathering.timer is not None:
                gathering.timer.cancel()
        self._gathering.clear()
        if self._submitting:
            await asyncio.wait(self._submitting, timeout=10.0)

    def _deployment(self, model: str, name: str) -> Deployment:
        found = self.router.by_label(model, name)
        assert found is not None, f"{model}/{name} is not configured"
        return found

    def _flush(self, key: tuple[str, str, str]) -> None:
        gathering = self._gathering.pop(key, None)
        if gathering is None:
            return
        if gathering.timer is not None:
            gathering.timer.cancel()
        task = asyncio.create_task(self._submit(*key, gathering), name="batch-submit")
        self._submitting.add(task)
        task.add_done_callback(self._submitting.discard)

    async def _submit(self, model: str, name: str, endpoint: str, gathering: Gathering) -> None:
        deployment = self._deployment(model, name)
        job = new_id("ujob_")
        try:
            attached = await self._attach(job, model, deployment, endpoint, gathering.works)
        finally:
            for work in gathering.works:
                if self._unattached.get(work.id) is gathering.attached:
                    del self._unattached[work.id]
            gathering.attached.set_result(None)
        # A row given back and claimed again meanwhile is attached at its new attempt only.
        works = [w for w in gathering.works if (w.id, w.attempt) in attached]
        if not works:
            return
        log.info("job %s: %d rows of %s for %s", job, len(works), endpoint, deployment.label(model))
        try:
            await submit(
                self.store,
                self.apis[deployment.config.batch.api],
                deployment,
                job=job,
                endpoint=endpoint,
                lines=[job_line(deployment, w.id, endpoint, w.body) for w in works],
                file_id=None,
                metrics=self.metrics,
            )
        except UpstreamError as exc:
            log.warning("job %s not submitted yet: %s", job, exc)
            await self.store.polled(job, None, deployment.config.batch.poll_min_s, str(exc))
        finally:
            self.submitted()  # the poller's next look is due in poll_min_s, not its idle wait

    async def _attach(
        self, job: str, model: str, deployment: Deployment, endpoint: str, works: list[Work]
    ) -> set[tuple[str, int]]:
        while True:
            try:
                return await self.store.attach(
                    job=job,
                    model=model,
                    deployment=deployment.name,
                    api=deployment.config.batch.api,
                    endpoint=endpoint,
                    owner=self.owner,
                    rows=[(w.id, w.attempt) for w in works],
                )
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning("job %s not attached yet (%s)", job, exc)
                await asyncio.sleep(STORE_RETRY_S)


def job_line(deployment: Deployment, row_id: str, endpoint: str, body: dict[str, Any]) -> JobLine:
    """A row as a line of a job: the body as the provider takes it (not streamed)."""
    prepared = prepare_body(deployment, body, endpoint)
    prepared.pop("stream", None)
    prepared.pop("stream_options", None)
    return (row_id, endpoint, prepared)


async def submit(
    store: UpstreamJobStore,
    api: ProviderBatches,
    deployment: Deployment,
    *,
    job: str,
    endpoint: str,
    lines: list[JobLine],
    file_id: str | None,
    metrics: Metrics | None = None,
) -> None:
    """Upload the job's input (unless ``file_id`` was uploaded already, or the format sends
    lines inline) and create it; each step's result is stored before the next. Lines the
    format refuses fail their rows; the rest are submitted."""
    config = deployment.config.batch
    try:
        if file_id is None and api.uploads:
            file_id = await api.upload(deployment, f"{job}.jsonl", lines)
            await store.uploaded(job, file_id)
        state = await api.create(
            deployment,
            file_id=file_id,
            lines=lines,
            endpoint=endpoint,
            tag=job,
            window=config.completion_window,
        )
    except RefusedLines as exc:
        rest = await _refuse(store, deployment, job, lines, exc, metrics)
        if rest:  # uploaded again if the format uploads: the refusal came before its upload
            await submit(
                store,
                api,
                deployment,
                job=job,
                endpoint=endpoint,
                lines=rest,
                file_id=None,
                metrics=metrics,
            )
        return
    await store.submitted(job, state.id, state.status, config.poll_min_s)


async def _refuse(
    store: UpstreamJobStore,
    deployment: Deployment,
    job: str,
    lines: list[JobLine],
    refusal: RefusedLines,
    metrics: Metrics | None = None,
) -> list[JobLine]:
    """Fail the rows of the refused lines (final, with the refusal's error); the others."""
    rest = [line for line in lines if line[0] not in refusal.refused]
    if len(rest) == len(lines):
        raise ValueError(f"job {job}: the lines refused are none of the job's") from refusal
    finished = []
    model = ""  # a job's rows are all of one model
    for row in await store.held(job):
        model = row.model
        exc = refusal.refused.get(row.id)
        if exc is not None:
            outcome = dataclasses.replace(
                failed(exc, exc.message),
                deployment=deployment.label(row.model),
                executor=ExecutorKind.BATCH,
            )
            finished.append(Finished(row.id, row.attempts, outcome, row.batch_id, row.background))
    log.warning("job %s: %d lines refused (%s), %d left", job, len(finished), refusal, len(rest))
    if rest:
        stored = await store.refused(job, finished, rows=len(rest))
    else:
        counts = {str(Status.FAILED): len(finished)}
        stored = await store.settle(
            job, finished, [], status=None, counts=counts, error=ErrorCode.UNTRANSLATABLE
        )
    count_finished(metrics, model, finished, stored)
    return rest
