"""Single flex and background requests: claimed from the table in chunks, run concurrently.

A request is not a procrastinate job: the ``requests`` table is its queue (as it is for batch
lines). Each worker process runs one dispatcher that

- wakes on ``NOTIFY tiergate_work`` (sent by the statement that accepts requests), when one of
  its calls ends (a slot is free), when a retry of its own falls due, and every ``poll_s`` as a
  safety net (a lost notification, a retry scheduled by a process that died);
- claims, in one statement, up to its free slots of every model (``flex_concurrency`` calls
  per model and process, the cap the batch lines of that model share), highest priority
  first: background calls of the default tier before flex;
- runs each claimed request as one upstream attempt and stores the results of attempts that end
  together with one statement (group commit), which also wakes their blocking clients.

A retryable failure goes back to the queue with ``not_before`` set by the backoff; the
dispatcher makes it claimable when it falls due. The rows of a worker that dies stay claimed
by it until the sweep sees its presence row fall silent (``stalled_after_s``) and gives them
back; a worker that stops gracefully gives back what it could not finish at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from app import logs, tracing
from app.cache.service import wanted_for
from app.calls.policy import EXPIRED, Attempt
from app.settings import Settings
from app.store.db import database_unavailable, report_failed_pass
from app.store.dburl import DatabaseURL
from app.store.events import EventStore
from app.store.group_commit import GroupCommit
from app.store.listener import Listener
from app.store.outcomes import Outcome
from app.store.requests import ClaimedRequest, Finish, RequestStore
from app.vocabulary import Channel, ErrorCode, Status, error
from worker.execute import RequestRunner
from worker.executors.base import work_of
from worker.outcomes import count_ended, tier_of
from worker.pacing import PACED, Pacer
from worker.streaming import EventWriter, wants_events

log = logging.getLogger("tiergate.flex")

# A result the database could not take (it is restarting) is tried again this often.
STORE_RETRY_S = 1.0
PROCESSING_FAILED = Outcome(status=Status.FAILED, error=error(ErrorCode.PROCESSING_FAILED))


class FlexDispatcher:
    """Claims and runs single deferred requests for one worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        url: DatabaseURL,
        store: RequestStore,
        runner: RequestRunner,
        worker_id: str,
        pacer: Pacer,
        also: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        """``also``: more channels to LISTEN on through this dispatcher's connection, and what
        to call with their payloads (and with ``""`` after each reconnection); one LISTEN
        connection per worker process serves them all."""
        self.settings = settings
        self._also = dict(also or {})
        self.pacer = pacer
        self.store = store
        self.events = EventStore(store.engine)
        self.runner = runner
        self.worker_id = worker_id
        self.poll_s = settings.limits.flex_poll_s
        self._inflight: dict[str, int] = defaultdict(int)
        self._calls: set[asyncio.Task[None]] = set()
        # Requests whose upstream call is under way: a cancel (NOTIFY done) abandons the call.
        self._calling: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._due: asyncio.TimerHandle | None = None  # the next retry of ours falls due
        self._check_due = True
        self._listener = Listener(
            url,
            [Channel.WORK, Channel.DONE, *self._also],
            self._on_notify,
            on_connected=self._on_connected,
            name="tiergate-work",
        )
        self._finishing: GroupCommit[Finish, bool] = GroupCommit(
            self._store_results,
            name="flex-finish",
            item_may_be_at_fault=lambda exc: not database_unavailable(exc),
        )

    async def run(self) -> None:
        """Claim and run requests until cancelled; then give back what is unfinished."""
        self._listener.start()
        self._finishing.start()
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    # The safety net: retries put back by a process that died are due too.
                    self._check_due = True
                self._wake.clear()
                try:
                    await self._dispatch()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    report_failed_pass(log, exc, "flex dispatch")
        finally:
            await self._stop()

    def _on_notify(self, channel: str, payload: str) -> None:
        if (handler := self._also.get(channel)) is not None:
            handler(payload)
        elif channel == Channel.WORK:
            self._wake.set()
        elif (call := self._calling.pop(payload, None)) is not None:
            # Final while its call runs: cancelled by its owner. Its result could not be
            # stored anyway; stop paying for it.
            log.info("request %s is final: its upstream call is abandoned", payload)
            call.cancel()

    async def _on_connected(self) -> None:
        # Anything accepted while nobody listened is claimed now.
        self._check_due = True
        self._wake.set()
        for handler in self._also.values():
            handler("")

    async def _dispatch(self) -> None:
        if self._check_due:
            self._check_due = False
            self._schedule_due(await self.store.promote_due())
        while True:
            wanted = self._free_slots()
            if not wanted:
                return
            rows = await self.store.claim(wanted, self.worker_id)
            ready, waiting = await self.pacer.split(rows)
            for row in ready:
                self._start(row)
            for row, delay_s in waiting:  # over its key's rate: back in the queue till then
                await self.store.requeue(row.id, row.attempts, PACED, delay_s, counted=False)
                self._schedule_due(delay_s)
            # A model that filled its free slots may have more waiting: claim again.
            got = Counter(row.model for row in rows)
            if not any(got[model] == n for model, n in wanted.items()):
                return

    def _free_slots(self) -> dict[str, int]:
        return {
            name: model.flex_concurrency - self._inflight[name]
            for name, model in self.settings.models.items()
            if model.flex_concurrency > self._inflight[name]
        }

    def _schedule_due(self, in_s: float | None) -> None:
        """Wake up (and promote retries) when the next retry falls due, unless an earlier
        wake-up is set already (it reschedules the next one then)."""
        if in_s is None:
            return
        loop = asyncio.get_running_loop()
        if self._due is not None and self._due.when() <= loop.time() + in_s:
            return
        if self._due is not None:
            self._due.cancel()
        self._due = loop.call_later(in_s, self._promote_soon)

    def _promote_soon(self) -> None:
        self._due = None
        self._check_due = True
        self._wake.set()

    def _start(self, row: ClaimedRequest) -> None:
        self._inflight[row.model] += 1
        task = asyncio.create_task(self._run(row), name=f"flex-{row.id}")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _run(self, row: ClaimedRequest) -> None:
        request_id, attempt, model = row.id, row.attempts, row.model
        tier = tier_of(line=False, background=row.background)
        logs.request_id.set(request_id)  # this task's log lines name the request
        writer: EventWriter | None = None
        path: str | None = None  # the executor the attempt was routed to
        try:
            if row.expired:
                await self._end(Finish(request_id, attempt, EXPIRED), model, tier)
                return
            if wants_events(row):
                # A retry or a rescued attempt goes on after what is stored.
                writer = await self._writer(row)
            task = asyncio.current_task()
            assert task is not None
            self._calling[request_id] = task
            try:
                if tracing.tracer is None:
                    result = await self.runner.attempt(
                        work_of(row, events=writer),
                        cached=wanted_for(row),
                    )
                else:
                    result = await self._traced(row, writer)
            finally:
                self._calling.pop(request_id, None)
            if result is None:  # its executor took it over and finishes it itself
                return
            self.pacer.settle(row, result.outcome)
            del row  # the body: a waiting retry or a slow store keeps only the outcome
            path = result.path
            if result.outcome is not None:
                if writer is not None:
                    if await self._finish_streamed(writer, result.outcome):
                        count_ended(self.runner.metrics, model, tier, result.outcome, path)
                else:
                    finish = Finish(request_id, attempt, result.outcome)
                    await self._end(finish, model, tier, path)
                return
            assert result.retry_in_s is not None and result.error is not None
            if writer is not None:
                await self._store(writer.flush)
            await self._requeue(request_id, attempt, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must not leave the row claimed by this live worker (nobody would ever
            # finish it), nor loop by claiming it again and again: it fails, saying so.
            log.exception("request %s: attempt %d failed unexpectedly", request_id, attempt)
            with contextlib.suppress(Exception):
                await self._end(Finish(request_id, attempt, PROCESSING_FAILED), model, tier, path)
        finally:
            if writer is not None:
                writer.close()
            self._inflight[model] -= 1
            self._wake.set()  # a slot is free

    async def _traced(self, row: ClaimedRequest, writer: EventWriter | None) -> Attempt | None:
        """The attempt at ``row`` in an attempt span of the trace its row keeps (a retry's and
        a rescued attempt's too), after a span for its wait in the queue."""
        attributes = {
            "gen_ai.operation.name": tracing.operation(row.endpoint),
            "gen_ai.request.model": row.model,
            "tiergate.tier": row.service_tier,
            "tiergate.request_id": row.id,
            "tiergate.attempt": row.attempts,
        }
        # The queue wait is the first attempt's alone (a retry's starts at its backoff).
        waited = row.created_at if row.attempts == 1 else None
        with tracing.attempt_span(row.traceparent, waited, attributes) as span:
            logs.trace_id.set(tracing.trace_id())  # for its lines after the span, too
            result = await self.runner.attempt(work_of(row, events=writer), cached=wanted_for(row))
            if result is not None:
                outcome = result.outcome
                tracing.annotate(
                    span,
                    {
                        "tiergate.deployment": (outcome and outcome.deployment)
                        or result.deployment,
                        "tiergate.status": outcome.status if outcome else "retry",
                        "tiergate.retry_in_s": result.retry_in_s,
                    },
                )
                if outcome is not None:
                    tracing.annotate(span, outcome_attributes(outcome))
            return result

    async def _writer(self, row: ClaimedRequest) -> EventWriter:
        """The event writer of a streamed attempt, numbering after the stored events."""
        while True:
            try:
                return EventWriter(self.events, row, await self.events.last(row.id) + 1)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                await asyncio.sleep(STORE_RETRY_S)

    async def _finish_streamed(self, writer: EventWriter, outcome: Outcome) -> bool:
        """Store a streamed attempt's outcome with its last events (one statement); False
        when the row had moved on (cancelled, deleted)."""
        stored = False

        async def finish() -> None:
            nonlocal stored
            stored = await writer.finish(outcome)

        await self._store(finish)
        return stored

    async def _store(self, write: Callable[[], Awaitable[None]]) -> None:
        """Run a write, waiting out a database restart."""
        while True:
            try:
                await write()
                return
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning("events not stored yet (%s)", exc)
                await asyncio.sleep(STORE_RETRY_S)

    async def _end(self, finish: Finish, model: str, tier: str, path: str | None = None) -> None:
        """Store an outcome (:meth:`_finish`) and count it once stored."""
        if await self._finish(finish):
            count_ended(self.runner.metrics, model, tier, finish.outcome, path)

    async def _finish(self, finish: Finish) -> bool:
        """Store an outcome, waiting out a database restart (the call is not made twice);
        False when the row had moved on (cancelled, deleted)."""
        while True:
            try:
                return await self._finishing.submit(finish)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning("request %s: result not stored yet (%s)", finish.id, exc)
                await asyncio.sleep(STORE_RETRY_S)

    async def _requeue(self, id: str, attempt: int, result: Attempt) -> None:
        error, delay_s = result.error, result.retry_in_s
        assert error is not None and delay_s is not None
        while True:
            try:
                if await self.store.requeue(
                    id,
                    attempt,
                    error,
                    delay_s,
                    deployment=result.deployment,
                    counted=result.counted,
                ):
                    log.info(
                        "request %s attempt %d %s (%s); retry in %.1fs",
                        id,
                        attempt,
                        "failed" if result.counted else "found no deployment",
                        error["code"],
                        delay_s,
                    )
                    self._schedule_due(delay_s)
                return
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                await asyncio.sleep(STORE_RETRY_S)

    async def _store_results(self, items: list[Finish]) -> list[bool]:
        stored = set(await self.store.finish_many(items))
        return [item.id in stored for item in items]

    async def _stop(self) -> None:
        """Give running calls a moment, then give their rows back to the queue."""
        if self._due is not None:
            self._due.cancel()
        calls = list(self._calls)
        if calls:
            await asyncio.wait(calls, timeout=10.0)
            for task in calls:
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        with contextlib.suppress(Exception):
            released = await self.store.release(self.worker_id)
            if released:
                log.info("gave %d unfinished requests back to the queue", len(released))
        await self._finishing.stop()
        await self._listener.stop()


def outcome_attributes(outcome: Outcome) -> dict[str, Any]:
    """The GenAI attributes of an attempt's outcome that are at hand (no text of it)."""
    body = outcome.response_body
    return {
        "tiergate.executor": outcome.executor,
        "tiergate.cache": outcome.cache,
        "gen_ai.response.model": body.get("model") if isinstance(body, dict) else None,
        "gen_ai.usage.input_tokens": outcome.usage.input,
        "gen_ai.usage.output_tokens": outcome.usage.output,
    }
