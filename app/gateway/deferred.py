"""Flex and background calls: accept durably, then wait (blocking flex) or return at once.

Accepting is one INSERT of the request row (the workers claim it from the table), shared by
the submissions that arrive together (group commit). A blocking client waits on the LISTEN
hub; if it disconnects, the work goes on and the result stays readable by the id sent in
``x-request-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from app import tracing
from app.calls.policy import rule_for_status
from app.gateway.follow import EventStreams
from app.gateway.new_rows import call_columns
from app.gateway.waiters import WaiterHub
from app.keys import ApiKey
from app.metrics import Metrics
from app.openai.errors import APIError, json_response
from app.openai.objects import response_object, row_error, stored_result
from app.openai.replay import KEEP_ALIVE, replayed, stream_error
from app.openai.stored_events import dumps, frame, opening_events
from app.openai.validation import Call
from app.settings import Settings
from app.store.db import database_unavailable
from app.store.group_commit import GroupCommit
from app.store.new_requests import new_request_columns
from app.store.requests import RequestRow, RequestStore, Submission
from app.vocabulary import LIVE, Header, Priority, RequestErrorCode, ResponseErrorCode, Status, Tier

# A blocking client gives up this long after the window, should no worker ever come.
WAIT_GRACE_S = 30.0


class DeferredCalls:
    """Runs the flex/background side of the tier middleware."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: RequestStore,
        hub: WaiterHub,
        metrics: Metrics,
        streams: EventStreams,
    ) -> None:
        self.settings = settings
        self.streams = streams
        self.store = store
        self.hub = hub
        self.metrics = metrics
        # A burst of clients shares statements instead of queueing for pool connections.
        self.accepting: GroupCommit[Submission, None] = GroupCommit(
            store.submit_many,
            name="flex-submit",
            item_may_be_at_fault=lambda exc: not database_unavailable(exc),
        )
        # Answers woken together (a finished burst) are read by one query, not one each.
        self.reading: GroupCommit[tuple[str, str], RequestRow | None] = GroupCommit(
            store.get_many,
            name="flex-read",
            item_may_be_at_fault=lambda exc: not database_unavailable(exc),
        )

    def start(self) -> None:
        self.accepting.start()
        self.reading.start()

    async def stop(self) -> None:
        await self.accepting.stop()
        await self.reading.stop()

    def _submission(self, call: Call, key: ApiKey, rid: str) -> Submission:
        return Submission(
            **call_columns(call, rid, key.id),
            window_s=self.settings.limits.flex_window_s,
            # Background calls of the default tier are claimed before flex work.
            priority=Priority.FLEX if call.tier == Tier.FLEX else Priority.BACKGROUND,
            pin=call.pin,
            cache=call.cache,
            # The worker's attempt continues the accepting span's trace.
            traceparent=tracing.traceparent() if tracing.tracer is not None else None,
        )

    async def handle(
        self,
        call: Call,
        key: ApiKey,
        receive: Receive,
        *,
        rid: str,
        accepted: Callable[[], None],
    ) -> Response:
        """Accept the call; answer at once (background) or once it is final (blocking flex).

        ``accepted`` is called as soon as the row is stored: from then on this frame holds no
        reference to the body, so a client that waits an hour keeps only a few small strings.
        """
        endpoint, background = call.endpoint, call.background
        include_usage = wants_usage(call.body) if call.stream else None
        submission = self._submission(call, key, rid)
        window_s = submission.window_s
        del call
        if background:
            # What was accepted, as a queued Response (a worker may have claimed it already).
            created = response_object(queued_row(submission))
            if include_usage is not None:
                return await self._background_stream(submission, key.id, created, accepted)
            await self.accepting.submit(submission)
            del submission
            accepted()
            return json_response(created, headers={"x-request-id": rid})

        if include_usage is not None:
            return await self._stream(submission, key.id, accepted, include_usage)
        started = time.perf_counter()
        async with self.hub.waiter(rid) as wait:
            await self.accepting.submit(submission)
            del submission
            accepted()
            self.metrics.waiting_clients.inc()
            try:
                finished = await _wait_unless_gone(wait(window_s + WAIT_GRACE_S), receive)
            finally:
                self.metrics.waiting_clients.dec()
        if finished is None:  # the client left; nobody to answer
            return Response(status_code=499)
        row = await self.reading.submit((rid, key.id))
        if row is None:
            raise APIError(
                404,
                f"Request {rid} was deleted before it finished.",
                code=RequestErrorCode.NOT_FOUND,
                headers={"x-request-id": rid},
            )
        self.metrics.observe_request(endpoint, Tier.FLEX, row.status, time.perf_counter() - started)
        return result_response(row)

    async def _background_stream(
        self,
        sub: Submission,
        owner: str,
        created: dict[str, Any],
        accepted: Callable[[], None],
    ) -> Response:
        """A background stream: its first events stored with the row, sent at once, then
        what the worker stores, followed live (``follow.py``)."""
        opening = opening_events(created)
        await self.accepting.submit(dataclasses.replace(sub, events=dumps(opening)))
        accepted()
        frames = tuple(frame(e["type"], dumps(e)) for e in opening)
        events = self.streams.follow(sub.id, owner, len(opening) - 1, opening=frames)
        headers = {"x-request-id": sub.id, "cache-control": "no-cache"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _stream(
        self,
        sub: Submission,
        owner: str,
        accepted: Callable[[], None],
        include_usage: bool,
    ) -> Response:
        """A blocking flex stream: accepted like any flex call, then keep-alive comments while
        it waits, then the stored result replayed as events (see ``app/openai/replay.py``)."""
        stack = contextlib.AsyncExitStack()
        wait = await stack.enter_async_context(self.hub.waiter(sub.id))
        try:
            await self.accepting.submit(sub)
        except BaseException:
            await stack.aclose()
            raise
        accepted()
        events = self._replay(sub.id, owner, sub.endpoint, sub.window_s, include_usage, wait, stack)
        headers = {"x-request-id": sub.id, "cache-control": "no-cache"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _replay(
        self,
        rid: str,
        owner: str,
        endpoint: str,
        window_s: float,
        include_usage: bool,
        wait: Callable[[float | None], Awaitable[bool]],
        stack: contextlib.AsyncExitStack,
    ) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        deadline = time.monotonic() + window_s + WAIT_GRACE_S
        every = self.settings.limits.stream_keepalive_s
        finished = False
        self.metrics.waiting_clients.inc()
        try:
            while not finished and (left := deadline - time.monotonic()) > 0:
                finished = await wait(min(every, left))
                if not finished:
                    yield KEEP_ALIVE
        finally:
            self.metrics.waiting_clients.dec()
            await stack.aclose()
        row = await self.reading.submit((rid, owner)) if finished else None
        if row is None:
            message = f"Request {rid} did not finish in time; fetch it later by id."
            if finished:
                message = f"Request {rid} was deleted before it finished."
            yield stream_error(
                endpoint, {"code": RequestErrorCode.STILL_RUNNING, "message": message}
            )
            return
        self.metrics.observe_request(endpoint, Tier.FLEX, row.status, time.perf_counter() - started)
        for part in replayed(row, include_usage=include_usage):
            yield part


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether a streaming client asked for the usage chunk (``stream_options``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def queued_row(sub: Submission) -> RequestRow:
    """The row a submission has just become, without reading it back."""
    return RequestRow(
        **new_request_columns(sub),
        status=Status.PENDING,
        created_at=dt.datetime.now(dt.UTC),
        priority=sub.priority,
        pinned_deployment=sub.pin,
        cache=sub.cache,
    )


def result_response(row: RequestRow) -> Response:
    """What a blocking client gets: the upstream body on success, an OpenAI error otherwise."""
    rid = row.id
    headers = {"x-request-id": rid}
    if row.deployment:
        headers[Header.DEPLOYMENT] = row.deployment
    if row.cache:  # the worker may have answered from the cache after all
        headers[Header.CACHE] = row.cache
    status = row.status
    if status == Status.COMPLETED:
        return json_response(stored_result(row), row.response_status or 200, headers)
    no_retry = {**headers, "x-should-retry": "false"}
    answered = row.response_status
    # A final client error from the provider: same status, same body; the worker decided, so
    # the SDK must not resubmit. (408/409/429 that outlasted max_attempts end as a 502 below.)
    final_4xx = (
        answered is not None and 400 <= answered < 500 and not rule_for_status(answered).retryable
    )
    if status == Status.FAILED and answered is not None and final_4xx:
        return json_response(row.response_body, answered, no_retry)
    if status in LIVE:
        raise APIError(
            504,
            f"Request {rid} is still {status}; fetch it later by id.",
            type="server_error",
            code=RequestErrorCode.STILL_RUNNING,
            headers=no_retry,
        )
    error = row_error(row) or {
        "code": ResponseErrorCode.SERVER_ERROR,
        "message": "The request failed.",
    }
    if status == Status.EXPIRED:
        raise APIError(
            429, error["message"], type="rate_limit_error", code=error["code"], headers=no_retry
        )
    if status == Status.CANCELLED:
        raise APIError(400, error["message"], code=error["code"], headers=no_retry)
    raise APIError(502, error["message"], type="server_error", code=error["code"], headers=no_retry)


async def _wait_unless_gone(waiting: Awaitable[bool], receive: Receive) -> bool | None:
    """Await ``waiting`` unless the client disconnects first (then None)."""
    wait_task = asyncio.ensure_future(waiting)

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    gone_task = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({wait_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
        return wait_task.result() if wait_task in done else None
    finally:
        for task in (wait_task, gone_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
