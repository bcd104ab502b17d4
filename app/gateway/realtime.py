"""Realtime calls: forward to the upstream at once, streaming passed through as it arrives.

Every answered call has a durable row before the client gets a byte. A stream's row is
inserted while the upstream call is already under way (its first byte is relayed at once). A
whole answer's row is written once, final, when the call ends (one INSERT instead of an INSERT
and an UPDATE: half the statements and none of the dead tuples), unless the call takes longer
than ``realtime_row_after_s``: then its row is inserted at that moment and finished at the end.
A gateway crash mid-call leaves an inserted row ``in_progress`` until the reaper marks it
``gateway_interrupted``; a call that had run for less than ``realtime_row_after_s`` leaves none
(its client got no answer either).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import Response, StreamingResponse

from app import tracing
from app.cache.service import Lookup, ResponseCache
from app.calls.outcome import Meter, answered, names, renamed
from app.calls.policy import fault_name, rule_for, rule_for_status
from app.calls.pricing import PriceBook
from app.calls.routing import Failover, ended_badly
from app.gateway.new_rows import call_columns
from app.keys import ApiKey
from app.metrics import Metrics
from app.openai.errors import APIError
from app.openai.sse import StreamRelay, events_end, events_in, relay_for, sse_error
from app.openai.usage import usage_of
from app.openai.validation import Call
from app.store.db import database_unavailable
from app.store.group_commit import GroupCommit
from app.store.outcomes import Outcome
from app.store.realtime import RealtimeEnd, RealtimeStart, RealtimeTracker, RealtimeWhole
from app.upstream.client import UpstreamClient, UpstreamError, read_all, retry_after
from app.upstream.deployment import Deployment
from app.upstream.reasons import reason
from app.upstream.router import NoCapacity, Router
from app.vocabulary import (
    CallClass,
    Endpoint,
    ErrorCode,
    Header,
    PriceTier,
    Status,
    Tier,
    UsagePath,
    error,
)

log = logging.getLogger("tiergate.proxy")

PASS_HEADERS = ("content-type", "retry-after", "retry-after-ms", "openai-processing-ms")


@dataclass
class Opened:
    """A deployment's answer: ``content`` read whole, or ``stream`` to relay (``stack``
    closes it)."""

    deployment: Deployment
    status_code: int
    headers: Mapping[str, str]
    content: bytes | None = None
    stream: httpx.Response | None = None
    stack: contextlib.AsyncExitStack | None = None
    span: Any = None  # the upstream call's client span (tracing on), ended with the call


class RealtimeProxy:
    """Forwards one classified realtime call and records it."""

    def __init__(
        self,
        *,
        store: RealtimeTracker,
        upstream: UpstreamClient,
        router: Router,
        metrics: Metrics,
        prices: PriceBook,
        cache: ResponseCache | None = None,
        gateway_id: str | None = None,
        settle: Callable[[str, int, int], None] | None = None,
        row_after_s: float = 1.0,
    ) -> None:
        self.cache = cache
        self.row_after_s = row_after_s
        # Rows of whole-answer calls not written yet (written at the end, or when the timer
        # fires), and the inserts of those the timer wrote.
        self._unwritten: dict[str, tuple[RealtimeStart, asyncio.TimerHandle]] = {}
        self._inserting: dict[str, asyncio.Future[None]] = {}
        self.gateway_id = gateway_id
        self.settle = settle  # corrects a rate-limited key's tokens once the usage is known
        self.meter = Meter(prices, metrics)
        self.router = router
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        # Tracking writes of concurrent calls share statements (see group_commit.py).
        self.tracking: GroupCommit[RealtimeStart | RealtimeEnd | RealtimeWhole, None] = GroupCommit(
            store.track,
            name="realtime-tracking",
            item_may_be_at_fault=lambda exc: not database_unavailable(exc),
        )

    def start(self) -> None:
        self.tracking.start()

    async def stop(self) -> None:
        await self.tracking.stop()
        await self.store.release()

    async def handle(
        self, call: Call, key: ApiKey, lookup: Lookup | None = None, *, rid: str
    ) -> Response:
        """Answer ``call`` (its id: ``rid``) from the upstream; ``lookup`` is the cache's
        miss, remembered once the answer is known."""
        started = time.perf_counter()
        start = RealtimeStart(
            **call_columns(call, rid, key.id), gateway_id=self.gateway_id, at=_now()
        )
        record: asyncio.Future[None] | None = None
        if call.stream or self.row_after_s <= 0:
            record = self.tracking.enqueue(start)
        else:
            timer = asyncio.get_running_loop().call_later(self.row_after_s, self._insert, rid)
            self._unwritten[rid] = (start, timer)
        try:
            opened = await self._route(call)
        except (UpstreamError, NoCapacity) as exc:
            if record is not None:
                await record
            raise await self._failed(rid, call, started, exc) from None
        except BaseException:
            if record is None:  # a trace of the call, as for one cut off later
                self._insert(rid)
                record = self._inserting.pop(rid, None)
            if record is not None:
                await _settle(record)
            raise
        try:
            if record is not None:
                await record
        except BaseException:
            if opened.stack is not None:
                await opened.stack.aclose()
            self.router.end(opened.deployment, telling=False)
            raise
        status, deployment = opened.status_code, opened.deployment
        served = deployment.label(call.model.name)
        headers = {k: v for k, v in opened.headers.items() if k in PASS_HEADERS}
        headers["x-request-id"] = rid
        headers[Header.DEPLOYMENT] = served
        naming = names(call.model, deployment)  # answers name the model the client asked for
        if opened.content is None:
            return StreamingResponse(
                self._relay(rid, call, started, opened, naming, key.id, lookup),
                status_code=status,
                headers=headers,
            )
        content = renamed(opened.content, *naming)
        content_type = headers.get("content-type")
        if status >= 400:  # in OpenAI's shape, whatever the provider sent
            headers["content-type"] = "application/json"
        outcome, content = answered(
            call.endpoint, call.body, rid, status, content, served, content_type
        )
        if opened.span is not None:
            _end_span(opened.span, call, outcome)
        # Recorded before answering: once the client has its answer, so has the row.
        await self._finish(rid, call, started, outcome)
        if lookup is not None and outcome.status == Status.COMPLETED:
            answer = outcome.response_body
            if answer is None:  # embeddings: their bodies are not kept on the row
                answer = json.loads(content)
            self._remember(call, key.id, lookup, answer)
        return Response(content, status_code=status, headers=headers)

    def _remember(self, call: Call, owner: str, lookup: Lookup, answer: Any) -> None:
        if self.cache is not None:
            self.cache.remember(
                lookup,
                owner=owner,
                model=call.model,
                endpoint=call.endpoint,
                request=call.body,
                answer=answer,
            )

    async def _route(self, call: Call) -> Opened:
        """The first answer worth giving, trying deployments then fallback models in turn
        (``app/calls/routing.py``); what each failure means is the call core's policy table.
        The last failure is the answer when no candidate is left; ``NoCapacity`` when none
        could be tried at all."""
        failover = Failover(self.router, call.model, call.pin)
        failure: Opened | UpstreamError | None = None
        while (deployment := await failover.next()) is not None:
            try:
                if tracing.tracer is None:
                    opened = await self._open(call, deployment)
                else:
                    opened = await self._traced_open(call, deployment)
            except UpstreamError as exc:
                rule = rule_for(exc)
                ended_badly(
                    self.router,
                    deployment,
                    rule,
                    fault=fault_name(exc),
                    retry_after_s=exc.retry_after_s,
                    realtime=True,
                )
                if not rule.elsewhere:
                    raise
                failure = exc
                continue
            except BaseException:
                self.router.end(deployment, telling=False)
                raise
            status = opened.status_code
            if status >= 400 and (rule := rule_for_status(status)).elsewhere:
                if opened.span is not None:  # this deployment's call ends here
                    tracing.failed(opened.span, f"HTTP {status}")
                    opened.span.end()
                    opened.span = None
                ended_badly(
                    self.router,
                    deployment,
                    rule,
                    fault=f"HTTP {status}",
                    retry_after_s=retry_after(opened.headers),
                    realtime=True,
                )
                failure = opened
                continue
            if opened.content is not None:
                self.router.end(deployment)
            return opened
        if isinstance(failure, UpstreamError):
            raise failure
        if failure is None:
            raise NoCapacity(retry_after_s=1.0)
        return failure

    async def _open(self, call: Call, deployment: Deployment) -> Opened:
        """One call to one deployment: a stream to relay, or the whole answer read."""
        if not call.stream:  # timeout_s bounds the whole of it
            answer = await self.upstream.whole(
                deployment, call.endpoint, call.body, call=CallClass.REALTIME
            )
            return Opened(deployment, answer.status_code, answer.headers, answer.content)
        # A stream's timeout_s bounds each wait for a chunk.
        stack = contextlib.AsyncExitStack()
        try:
            upstream = await stack.enter_async_context(
                self.upstream.open(
                    deployment, call.endpoint, upstream_body(call), call=CallClass.REALTIME
                )
            )
            if upstream.status_code >= 400:
                content = await read_all(upstream)
                await stack.aclose()
                return Opened(deployment, upstream.status_code, upstream.headers, content)
        except BaseException:
            await stack.aclose()
            raise
        return Opened(
            deployment, upstream.status_code, upstream.headers, stream=upstream, stack=stack
        )

    async def _traced_open(self, call: Call, deployment: Deployment) -> Opened:
        """``_open`` in a client span that sends its ``traceparent`` to the upstream; the span
        ends with the call (``_end_span``)."""
        span = tracing.start_client(
            tracing.operation(call.endpoint),
            deployment.target_model,
            {
                "tiergate.deployment": deployment.label(call.model.name),
                "gen_ai.provider.name": tracing.provider(deployment.config.engine),
                "tiergate.executor": UsagePath.REALTIME,
                "tiergate.tier": call.tier,
                "tiergate.stream": call.stream,
            },
        )
        try:
            with tracing.using(span):
                opened = await self._open(call, deployment)
        except BaseException as exc:
            if span is not None:
                tracing.failed(span, reason(exc))
                span.end()
            raise
        if span is not None:
            span.set_attribute("http.response.status_code", opened.status_code)
        opened.span = span
        return opened

    async def _failed(
        self, rid: str, call: Call, started: float, exc: UpstreamError | NoCapacity
    ) -> APIError:
        """Record a call no deployment answered; the error the client gets."""
        headers = {"x-request-id": rid}
        if isinstance(exc, NoCapacity):
            retry_s = max(1, math.ceil(exc.retry_after_s))
            body = error(ErrorCode.NO_CAPACITY)
            await self._finish(rid, call, started, Outcome(status=Status.FAILED, error=body))
            return APIError(
                503,
                body["message"],
                type="server_error",
                code=ErrorCode.NO_CAPACITY,
                headers={**headers, "retry-after": str(retry_s)},
            )
        await self._finish(rid, call, started, Outcome(status=Status.FAILED, error=exc.as_error()))
        return APIError(502, exc.message, type="server_error", code=exc.code, headers=headers)

    async def _relay(
        self,
        rid: str,
        call: Call,
        started: float,
        opened: Opened,
        naming: tuple[str, str],
        owner: str,
        lookup: Lookup | None,
    ) -> AsyncIterator[bytes]:
        """Send the upstream's events on as they arrive, whole events only, with our id.

        When the final event (``[DONE]``, ``response.completed``) arrives, the row is
        finished with the assembled object, then the event is sent and the stream ends:
        whatever the connection does next (the SDK closes it right after ``[DONE]``, often
        before the upstream has ended its body) cannot make it ``client_disconnected``.
        """
        upstream, deployment = opened.stream, opened.deployment
        assert upstream is not None
        served = deployment.label(call.model.name)
        fault: str | None = None
        relay = relay_for(
            call.endpoint,
            rid,
            strip_usage=_adds_usage(call),
            previous=call.body.get("previous_response_id"),
        )
        outcome = Outcome(
            status=Status.FAILED,
            response_status=upstream.status_code,
            error={
                "code": ErrorCode.CLIENT_DISCONNECTED,
                "message": "The client went away mid-stream.",
            },
            deployment=served,
        )
        pending = b""  # the start of an event whose end has not arrived
        relayed = 0  # whole events sent
        recorded = False
        try:
            async for chunk in upstream.aiter_bytes():
                data = pending + chunk
                cut = events_end(data)
                pending = data[cut:]
                if cut:
                    relayed += events_in(data, cut)
                    events = relay.feed(renamed(data[:cut], *naming))
                    if relay.done:
                        # Recorded before the final event is sent: once the client has it, a
                        # GET by the id it saw finds the whole object, and whatever the
                        # connection does next (the SDK hangs up at once) changes nothing.
                        outcome = _stream_outcome(relay, upstream.status_code, served)
                        recorded = True
                        await self._end_stream(rid, call, started, opened, outcome)
                    yield events
                    if relay.done:
                        break  # nothing follows the final event
            if not relay.done:
                if pending:
                    yield relay.feed(renamed(pending, *naming))
                outcome = _stream_outcome(relay, upstream.status_code, served)
                if outcome.status != Status.COMPLETED and relay.error is None:
                    message = "The upstream stream ended before its final event."
                    yield sse_error(call.endpoint, message, relayed)
        except Exception as exc:
            if not relay.done:  # else the client has its answer: only the upstream's tail broke
                fault = ErrorCode.UPSTREAM_STREAM_BROKEN
                message = f"The upstream stream broke: {reason(exc)}"
                outcome = _broken(upstream.status_code, message, served)
                log.info("stream %s broke: %r", rid, exc)
                # The status line is gone already: tell the client in-band, as OpenAI does.
                # Only whole events were relayed, so the error is an event of its own.
                yield sse_error(call.endpoint, message, relayed)
        finally:
            if not recorded:
                await self._end_stream(rid, call, started, opened, outcome, fault)
            if lookup is not None and outcome.status == Status.COMPLETED:
                self._remember(call, owner, lookup, outcome.response_body)

    async def _end_stream(
        self,
        rid: str,
        call: Call,
        started: float,
        opened: Opened,
        outcome: Outcome,
        fault: str | None = None,
    ) -> None:
        if opened.stack is not None:
            await opened.stack.aclose()
        if opened.span is not None:
            _end_span(opened.span, call, outcome)
            opened.span = None
        telling = outcome.status == Status.COMPLETED
        self.router.end(opened.deployment, fault=fault, telling=telling)
        await asyncio.shield(self._finish(rid, call, started, outcome))

    async def _finish(self, rid: str, call: Call, started: float, outcome: Outcome) -> None:
        if call.cache is not None:
            outcome = dataclasses.replace(outcome, cache=call.cache)
        self.metrics.observe_request(
            call.endpoint, Tier.DEFAULT, outcome.status, time.perf_counter() - started
        )
        if outcome.status == Status.COMPLETED:
            outcome = self.meter.priced(
                call.model.name, PriceTier.DEFAULT, call.key_name, call.body, outcome
            )
        if self.settle is not None and call.estimated_tokens:
            self.settle(call.key_id, call.estimated_tokens, outcome.usage.total or 0)
        unwritten = self._unwritten.pop(rid, None)
        if unwritten is not None:  # the row, final at once: no answer goes without it
            start, timer = unwritten
            timer.cancel()
            await self.tracking.submit(RealtimeWhole(start, outcome))
            return
        inserting = self._inserting.pop(rid, None)
        if inserting is not None:  # inserted when row_after_s passed: no answer without it
            await inserting
        try:
            await self.tracking.submit(RealtimeEnd(rid, outcome))
        except Exception as exc:  # the reaper will close the row
            log.warning("could not record the end of %s: %s", rid, exc)

    def _insert(self, rid: str) -> None:
        """Insert the row of a call still running (``row_after_s`` passed): a crash from here
        on leaves a trace."""
        unwritten = self._unwritten.pop(rid, None)
        if unwritten is not None:
            start, timer = unwritten
            timer.cancel()
            self._inserting[rid] = self.tracking.enqueue(start)


def _end_span(span: Any, call: Call, outcome: Outcome) -> None:
    """End an upstream call's client span with what its answer says (model, usage; its text
    only if the ``tracing:`` section asks for it)."""
    body = outcome.response_body
    tracing.annotate(
        span,
        {
            "gen_ai.response.model": body.get("model") if isinstance(body, dict) else None,
            "gen_ai.usage.input_tokens": outcome.usage.input,
            "gen_ai.usage.output_tokens": outcome.usage.output,
            "tiergate.status": outcome.status,
        },
    )
    if outcome.status != Status.COMPLETED:
        tracing.failed(span, str((outcome.error or {}).get("code") or outcome.status))
    tracing.capture(span, call.endpoint, call.body, body)
    span.end()


def _adds_usage(call: Call) -> bool:
    """Whether tiergate asks the upstream for a usage chunk the client did not ask for."""
    if call.endpoint != Endpoint.CHAT:
        return False
    options = call.body.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


def upstream_body(call: Call) -> dict[str, Any]:
    """The body sent to the upstream: a chat stream always asks for its usage chunk."""
    if call.stream and _adds_usage(call):
        options = call.body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        return {**call.body, "stream_options": {**options, "include_usage": True}}
    return call.body


def _broken(status: int, message: str, served: str) -> Outcome:
    return Outcome(
        status=Status.FAILED,
        response_status=status,
        error={"code": ErrorCode.UPSTREAM_STREAM_BROKEN, "message": message},
        deployment=served,
    )


def _stream_outcome(relay: StreamRelay, status: int, served: str) -> Outcome:
    """How a stream ended, with the object it built (usage read as for any other call)."""
    body = relay.result()
    if relay.error is not None:
        error = {
            "code": relay.error.get("code") or ErrorCode.UPSTREAM_STREAM_BROKEN,
            "message": relay.error.get("message") or "The stream failed.",
        }
        return Outcome(status=Status.FAILED, response_status=status, error=error, deployment=served)
    if not relay.done and not (body and body.get("object") == "chat.completion"):
        return _broken(status, "The upstream stream ended before its final event.", served)
    return Outcome(
        status=Status.COMPLETED,
        response_status=status,
        response_body=body,
        usage=usage_of(body),
        deployment=served,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _settle(task: asyncio.Future[None]) -> None:
    with contextlib.suppress(BaseException):
        await task
