"""Batch API jobs: validate an input file, run its lines in chunks, write the result files."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from asyncio import FIRST_COMPLETED
from dataclasses import dataclass, field
from typing import Any

from app import logs, tracing
from app.cache.service import wanted_for
from app.calls.conversations import Conversations
from app.ids import new_id
from app.openai.errors import APIError
from app.openai.objects import result_line
from app.openai.validation import check_for_chat, classify_body, parse_json
from app.settings import Settings
from app.store.batches import BatchStore, BatchToValidate, LineResult
from app.store.db import database_unavailable
from app.store.files import FileStore
from app.store.group_commit import GroupCommit
from app.store.keys import KeyStore
from app.store.outcomes import Outcome
from app.store.requests import ClaimedRequest
from app.vocabulary import (
    CLOSABLE_BATCH,
    BatchErrorCode,
    BatchStatus,
    CallClass,
    ErrorCode,
    ExecutorKind,
    PriceTier,
    Status,
    Tier,
    error,
)
from worker.execute import RequestRunner, RetryLater
from worker.executors.base import work_of
from worker.flex import outcome_attributes
from worker.outcomes import count_ended
from worker.pacing import PACED, Pacer

log = logging.getLogger("tiergate.batches")

MAX_REPORTED_ERRORS = 100
CANCEL_POLL_S = 0.5
LINE_EXPIRED = Outcome(status=Status.EXPIRED, error=error(ErrorCode.BATCH_EXPIRED))
LINE_CANCELLED = Outcome(status=Status.CANCELLED, error=error(ErrorCode.BATCH_CANCELLED))


@dataclass
class Validation:
    """What reading an input file found: its lines as COPY records, or its errors."""

    records: list[tuple[Any, ...]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "line": line, "param": param})


class BatchJobs:
    """The three batch tasks, sharing the worker's stores and runner."""

    def __init__(
        self,
        *,
        settings: Settings,
        batches: BatchStore,
        files: FileStore,
        keys: KeyStore,
        runner: RequestRunner,
        conversations: Conversations,
        pacer: Pacer,
    ) -> None:
        self.settings = settings
        self.pacer = pacer
        self.batches = batches
        self.files = files
        self.keys = keys
        self.runner = runner
        self.conversations = conversations
        # Lines of every batch job of this process that end together share one statement.
        self._recording: GroupCommit[LineResult, bool] = GroupCommit(
            batches.record,
            name="batch-lines",
            item_may_be_at_fault=lambda exc: not database_unavailable(exc),
        )

    def start(self) -> None:
        """Start storing line results (call from the running event loop)."""
        self._recording.start()

    async def stop(self) -> None:
        """Stop storing line results."""
        await self._recording.stop()

    # --- phases in the batch's trace ----------------------------------------------------

    async def validate(self, batch_id: str) -> None:
        """Read and check the input file; store its lines (or fail the batch)."""
        if tracing.tracer is None:
            await self._validate(batch_id)
            return
        parent = await self.batches.traceparent(batch_id)
        with tracing.phase_span("batch validate", parent, {"tiergate.batch_id": batch_id}):
            await self._validate(batch_id)

    async def run(self, batch_id: str, job_id: int) -> None:
        """Run the batch's lines (``_run``)."""
        if tracing.tracer is None:
            await self._run(batch_id, job_id)
            return
        parent = await self.batches.traceparent(batch_id)
        later: RetryLater | None = None
        attributes = {"tiergate.batch_id": batch_id, "tiergate.job_id": job_id}
        with tracing.phase_span("batch run", parent, attributes) as span:
            try:
                await self._run(batch_id, job_id)
            except RetryLater as exc:  # lines wait for a retry: no failure of the job
                tracing.annotate(span, {"tiergate.retry_in_s": exc.delay_s})
                later = exc
        if later is not None:
            raise later

    async def finalize(self, batch_id: str) -> None:
        """Write the output and error files, then end the batch (idempotent)."""
        if tracing.tracer is None:
            await self._finalize(batch_id)
            return
        parent = await self.batches.traceparent(batch_id)
        with tracing.phase_span("batch finalize", parent, {"tiergate.batch_id": batch_id}):
            await self._finalize(batch_id)

    # --- validation ---------------------------------------------------------------------

    async def _validate(self, batch_id: str) -> None:
        batch = await self.batches.for_validation(batch_id)
        if batch is None or batch.status not in (BatchStatus.VALIDATING, BatchStatus.CANCELLING):
            return
        result = await self._read(batch)
        if result.errors:
            log.info("batch %s failed validation: %d error(s)", batch_id, len(result.errors))
            await self.batches.fail_validation(batch_id, result.errors)
            return
        limits = self.settings.limits
        jobs = max(1, min(limits.batch_jobs, math.ceil(len(result.records) / limits.batch_chunk)))
        if await self.batches.start(batch_id, result.records, jobs):
            log.info("batch %s: %d lines queued for %d job(s)", batch_id, len(result.records), jobs)

    async def _read(self, batch: BatchToValidate) -> Validation:
        found = Validation()
        key = await self.keys.get(batch.owner_key_id)
        if key is None:
            found.error(BatchErrorCode.INVALID_API_KEY, "The batch's API key was revoked.", None)
            return found
        endpoint, batch_id = batch.endpoint, batch.id
        seen: set[str] = set()
        continuing: list[tuple[int, int, dict[str, Any]]] = []  # record, line, body
        model: str | None = None
        line_no = 0
        async for raw in self.files.lines(batch.input_file_id):
            line_no += 1
            if not raw.strip():
                continue
            if len(seen) >= self.settings.limits.max_batch_lines:
                found.error(
                    BatchErrorCode.TOO_MANY_TASKS,
                    f"A batch may have at most {self.settings.limits.max_batch_lines} lines.",
                    line_no,
                )
                return found
            item = _parse_line(raw, line_no, endpoint, found)
            if item is None:
                continue
            custom_id, body = item
            if custom_id in seen:
                found.error(
                    BatchErrorCode.DUPLICATE_CUSTOM_ID,
                    f"custom_id '{custom_id}' appears twice.",
                    line_no,
                    "custom_id",
                )
                continue
            seen.add(custom_id)
            if model is None:
                model = body.get("model")
            elif body.get("model") != model:
                found.error(
                    BatchErrorCode.MODEL_MISMATCH,
                    "Every line of a batch must use the same model.",
                    line_no,
                    "body.model",
                )
                continue
            try:
                call = classify_body(endpoint, body, self.settings, key)
            except APIError as exc:
                found.error(
                    exc.code or BatchErrorCode.INVALID_REQUEST,
                    exc.message,
                    line_no,
                    f"body.{exc.param}" if exc.param else None,
                )
                continue
            if not found.errors:
                if "previous_response_id" in call.body:
                    continuing.append((len(found.records), line_no, call.body))
                found.records.append(
                    (
                        new_id("batch_req_"),
                        batch_id,
                        key.id,
                        custom_id,
                        line_no,
                        endpoint,
                        call.model.name,
                        Tier.FLEX,
                        Status.PENDING,
                        json.dumps(call.body, separators=(",", ":")),
                        batch.expires_at,
                    )
                )
        if not seen and not found.errors:
            found.error(BatchErrorCode.EMPTY_FILE, "The input file has no lines.", None)
        if continuing and not found.errors:
            await self._continue(continuing, key.id, found)
        return found

    async def _continue(
        self, continuing: list[tuple[int, int, dict[str, Any]]], owner: str, found: Validation
    ) -> None:
        """Lines naming a ``previous_response_id`` get its history (one query for all)."""
        bodies = await self.conversations.resolve_many([b for _, _, b in continuing], owner)
        for (index, line_no, _), body in zip(continuing, bodies, strict=True):
            if not isinstance(body, APIError):
                model = self.settings.models.get(body.get("model") or "")
                try:
                    if model is not None:  # the history too must suit a chat-only upstream
                        check_for_chat(body, self.settings, model)
                except APIError as exc:
                    body = exc
            if isinstance(body, APIError):
                param = f"body.{body.param}" if body.param else None
                found.error(
                    body.code or BatchErrorCode.INVALID_REQUEST, body.message, line_no, param
                )
                continue
            record = found.records[index]
            found.records[index] = (
                *record[:9],
                json.dumps(body, separators=(",", ":")),
                *record[10:],
            )

    # --- running ------------------------------------------------------------------------

    async def _run(self, batch_id: str, job_id: int) -> None:
        """Run the batch's lines until none is left, then hand over to finalization.

        The job keeps at most the model's ``flex_concurrency`` lines (capped by
        ``batch_chunk``) in flight and claims more as they end; each line's result is stored
        when it ends (results that end together share one statement), so progress is live and
        a crash repeats at most the calls in flight.
        """
        window = await self._window(batch_id)
        cancelled = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancel(batch_id, cancelled))
        running: dict[str, asyncio.Task[bool]] = {}
        taken: list[str] = []  # lines an executor took over (a provider's Batch API job)
        resume, drained = True, False
        try:
            while True:
                free = window - len(running)
                # Claim when a quarter of the window is free (not once per line), or when
                # nothing runs: a claim is a query.
                if not drained and (free >= max(1, window // 4) or not running):
                    rows = await self.batches.claim(batch_id, job_id, free, resume=resume)
                    resume, drained = False, len(rows) < free
                    rows, waiting = await self.pacer.split(rows)
                    if waiting:  # over the key's rate: they wait; the job comes back then
                        drained = True
                        await self.batches.record(
                            [
                                LineResult(
                                    row.id, row.attempts, None, delay_s, PACED, counted=False
                                )
                                for row, delay_s in waiting
                            ]
                        )
                    for row in rows:
                        running[row.id] = asyncio.create_task(self._line(row, cancelled))
                if not running:
                    break
                done, _ = await asyncio.wait(running.values(), return_when=FIRST_COMPLETED)
                for line_id in [i for i, task in running.items() if task in done]:
                    # a line that could not be stored fails the job (retried)
                    if running.pop(line_id).result():
                        taken.append(line_id)
                drained = drained and len(running) > 0
        finally:
            watcher.cancel()
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
        if taken and self.runner.batch is not None:
            # Until their provider job holds them, the lines are this job's: it waits.
            await self.runner.batch.attached(taken)
        progress = await self.batches.progress(batch_id)
        if progress.pending:
            # Lines wait for a retry (or another job is claiming them): come back then.
            raise RetryLater(max(0.05, float(progress.next_in_s or 0)), "lines pending")
        if not progress.running:
            await self.batches.defer_finalize(batch_id)

    async def _window(self, batch_id: str) -> int:
        """How many lines a run job keeps in flight: what the model can run at once here
        (a model with a provider's Batch API hands lines over at once: a whole chunk)."""
        chunk = self.settings.limits.batch_chunk
        model = self.settings.models.get(await self.batches.model(batch_id) or "")
        if model is None or any(d.executor == ExecutorKind.BATCH for d in model.deployments):
            return chunk
        return min(chunk, model.flex_concurrency)

    async def _watch_cancel(self, batch_id: str, cancelled: asyncio.Event) -> None:
        """While a chunk runs, notice a cancel (one query per CANCEL_POLL_S, not per line):
        claimed lines still waiting for a model slot then end as cancelled."""
        while not cancelled.is_set():
            await asyncio.sleep(CANCEL_POLL_S)
            if await self.batches.status(batch_id) != BatchStatus.IN_PROGRESS:
                cancelled.set()

    async def _line(self, row: ClaimedRequest, cancelled: asyncio.Event) -> bool:
        """Run one line; True if its executor took it over (it finishes it later)."""
        logs.request_id.set(row.id)  # this task's log lines name the line
        if tracing.tracer is None:
            return await self._run_line(row, cancelled)
        if not tracing.sampled(row.id, tracing.config.batch_line_sample):
            with tracing.detached():  # no span, no traceparent upstream: not in the sample
                return await self._run_line(row, cancelled)
        attributes = {
            "gen_ai.operation.name": tracing.operation(row.endpoint),
            "gen_ai.request.model": row.model,
            "tiergate.tier": PriceTier.BATCH,
            "tiergate.request_id": row.id,
            "tiergate.attempt": row.attempts,
        }
        with tracing.step("batch line", attributes) as span:
            return await self._run_line(row, cancelled, span)

    async def _run_line(
        self, row: ClaimedRequest, cancelled: asyncio.Event, span: Any = None
    ) -> bool:
        attempt = await self.runner.attempt(
            work_of(
                row,
                tier=PriceTier.BATCH,
                expired=LINE_EXPIRED,
                stop=cancelled,
                stopped=LINE_CANCELLED,
            ),
            cached=wanted_for(row),
        )
        if attempt is None:  # its executor took it over and finishes it itself
            return True
        model = row.model
        if span is not None:
            outcome = attempt.outcome
            tracing.annotate(
                span,
                {
                    "tiergate.status": outcome.status if outcome else "retry",
                    "tiergate.deployment": (outcome and outcome.deployment) or attempt.deployment,
                    "tiergate.retry_in_s": attempt.retry_in_s,
                    **(outcome_attributes(outcome) if outcome is not None else {}),
                },
            )
        result = LineResult(
            row.id,
            row.attempts,
            attempt.outcome,
            attempt.retry_in_s,
            attempt.error,
            deployment=attempt.deployment,
            counted=attempt.counted,
        )
        self.pacer.settle(row, attempt.outcome)
        del row  # the body
        if await self._recording.submit(result) and attempt.outcome is not None:
            count_ended(self.runner.metrics, model, CallClass.BATCH, attempt.outcome, attempt.path)
        return False

    # --- finalizing ---------------------------------------------------------------------

    async def _finalize(self, batch_id: str) -> None:
        batch = await self.batches.for_finalize(batch_id)
        if batch is None or batch.live or batch.status not in CLOSABLE_BATCH:
            return
        owner = batch.owner_key_id
        output = await self.files.create(
            id=new_id("file-"),
            owner=owner,
            filename=f"{batch_id}_output.jsonl",
            purpose="batch_output",
        )
        errors = await self.files.create(
            id=new_id("file-"),
            owner=owner,
            filename=f"{batch_id}_error.jsonl",
            purpose="batch_output",
        )
        async for page in self.batches.result_pages(batch_id):
            out: list[str] = []
            err: list[str] = []
            for row in page:
                ok, line = result_line(row)
                (out if ok else err).append(line)
            if out:
                await output.write("".join(out).encode())
            if err:
                await errors.write("".join(err).encode())
        await output.close(publish=False)
        await errors.close(publish=False)
        status = (
            BatchStatus.CANCELLED
            if batch.status == BatchStatus.CANCELLING
            else BatchStatus.EXPIRED
            if batch.expired
            else BatchStatus.COMPLETED
        )
        final = await self.batches.close(
            batch_id,
            status,
            output.id if output.size else None,
            errors.id if errors.size else None,
        )
        for unused in (output, errors):
            if unused.size == 0 or final != status:
                await self.files.discard(unused.id)
        log.info("batch %s %s", batch_id, final)


def _parse_line(
    raw: bytes, line_no: int, endpoint: str, found: Validation
) -> tuple[str, dict[str, Any]] | None:
    try:
        # The gateway's own body checks: a line that PostgreSQL or a worker could not take
        # again (NUL, NaN, lone surrogates, absurd nesting) must fail here, not in the COPY.
        item = parse_json(raw)
    except APIError as exc:
        found.error(
            BatchErrorCode.INVALID_JSON_LINE, f"This line is not valid: {exc.message}", line_no
        )
        return None
    custom_id, body = item.get("custom_id"), item.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        found.error(
            BatchErrorCode.INVALID_REQUEST,
            "Each line needs a string 'custom_id'.",
            line_no,
            "custom_id",
        )
        return None
    if item.get("method", "POST") != "POST":
        found.error(BatchErrorCode.INVALID_REQUEST, "'method' must be POST.", line_no, "method")
        return None
    if item.get("url") != endpoint:
        found.error(
            BatchErrorCode.URL_MISMATCH,
            f"The line's url {item.get('url')!r} differs from the batch's {endpoint!r}.",
            line_no,
            "url",
        )
        return None
    if not isinstance(body, dict):
        found.error(
            BatchErrorCode.INVALID_REQUEST, "Each line needs an object 'body'.", line_no, "body"
        )
        return None
    if body.get("stream") or body.get("background"):
        found.error(
            BatchErrorCode.INVALID_REQUEST,
            "Batch lines cannot stream or run in the background.",
            line_no,
            "body",
        )
        return None
    return custom_id, body
