"""Realtime calls: forward to the upstream at once, streaming passed through as it arrives.

The request row is inserted while the upstream call is already under way and before the
client gets a byte, so every answered call has a durable trace; a gateway crash mid-call
leaves the row ``in_progress`` until the reaper marks it ``gateway_interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from app.ids import request_id
from app.metrics import Metrics
from app.openai.errors import APIError, error_body
from app.openai.upstream_errors import normalize_error
from app.openai.usage import StreamUsage, usage_of
from app.openai.validation import Call
from app.store.db import database_unavailable
from app.store.group_commit import GroupCommit
from app.store.keys import ApiKey
from app.store.outcomes import Outcome
from app.store.realtime import RealtimeEnd, RealtimeStart, RealtimeTracker
from app.upstream.client import UpstreamClient, UpstreamError, read_all, within
from app.upstream.reasons import reason
from app.vocabulary import ErrorCode, Status, upstream_status

log = logging.getLogger("tiergate.proxy")

# Embedding vectors are bulky and rarely worth keeping; their usage is stored all the same.
STORE_BODY_ENDPOINTS = frozenset({"/v1/responses", "/v1/chat/completions"})
PASS_HEADERS = ("content-type", "retry-after", "retry-after-ms", "openai-processing-ms")


class RealtimeProxy:
    """Forwards one classified realtime call and records it."""

    def __init__(
        self,
        *,
        store: RealtimeTracker,
        upstream: UpstreamClient,
        metrics: Metrics,
        gateway_id: str | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        # Tracking writes of concurrent calls share statements (see group_commit.py).
        self.tracking: GroupCommit[RealtimeStart | RealtimeEnd, None] = GroupCommit(
            store.track,
            name="realtime-tracking",
            item_may_be_at_fault=lambda exc: not database_unavailable(exc),
        )

    def start(self) -> None:
        self.tracking.start()

    async def stop(self) -> None:
        await self.tracking.stop()
        await self.store.release()

    async def handle(self, call: Call, key: ApiKey) -> Response:
        rid = request_id(call.endpoint)
        started = time.perf_counter()
        record = self.tracking.enqueue(
            RealtimeStart(
                id=rid,
                owner=key.id,
                endpoint=call.endpoint,
                model=call.model.name,
                stream=call.stream,
                body=call.body,
                gateway_id=self.gateway_id,
            )
        )
        stack = contextlib.AsyncExitStack()
        try:
            # A stream's timeout_s bounds each wait for a chunk; any other call's, the whole of it.
            async with contextlib.nullcontext() if call.stream else within(call.model.timeout_s):
                upstream = await stack.enter_async_context(
                    self.upstream.open(call.model, call.endpoint, call.body)
                )
                relay = call.stream and upstream.status_code < 400
                content = None if relay else await read_all(upstream)
        except UpstreamError as exc:
            await stack.aclose()
            await record
            await self._finish(
                rid, call, started, Outcome(status=Status.FAILED, error=exc.as_error())
            )
            raise APIError(
                502, exc.message, type="server_error", code=exc.code, headers={"x-request-id": rid}
            ) from exc
        except BaseException:
            await stack.aclose()
            await _settle(record)
            raise
        if content is not None:
            await stack.aclose()
        try:
            await record
        except BaseException:
            await stack.aclose()
            raise
        headers = {k: v for k, v in upstream.headers.items() if k in PASS_HEADERS}
        headers["x-request-id"] = rid
        if content is None:
            return StreamingResponse(
                self._relay(rid, call, started, upstream, stack),
                status_code=upstream.status_code,
                headers=headers,
            )
        if upstream.status_code >= 400:  # in OpenAI's shape, whatever the provider sent
            headers["content-type"] = "application/json"
        outcome, content = _outcome(call, rid, upstream.status_code, content, headers)
        # Recorded before answering: once the client has its answer, so has the row.
        await self._finish(rid, call, started, outcome)
        return Response(content, status_code=upstream.status_code, headers=headers)

    async def _relay(
        self, rid: str, call: Call, started: float, upstream: Any, stack: contextlib.AsyncExitStack
    ) -> AsyncIterator[bytes]:
        watcher = StreamUsage()
        outcome = Outcome(
            status=Status.FAILED,
            response_status=upstream.status_code,
            error={
                "code": ErrorCode.CLIENT_DISCONNECTED,
                "message": "The client went away mid-stream.",
            },
        )
        pending = b""  # the start of an event whose end has not arrived
        relayed = 0  # whole events sent
        try:
            async for chunk in upstream.aiter_bytes():
                watcher.feed(chunk)
                data = pending + chunk
                cut = events_end(data)
                pending = data[cut:]
                if cut:
                    relayed += events_in(data, cut)
                    yield data[:cut]
            if pending:
                yield pending
            given, produced, total = watcher.usage
            outcome = Outcome(
                status=Status.FAILED if watcher.failed else Status.COMPLETED,
                response_status=upstream.status_code,
                input_tokens=given,
                output_tokens=produced,
                total_tokens=total,
            )
        except Exception as exc:
            message = f"The upstream stream broke: {reason(exc)}"
            outcome = Outcome(
                status=Status.FAILED,
                response_status=upstream.status_code,
                error={"code": ErrorCode.UPSTREAM_STREAM_BROKEN, "message": message},
            )
            log.info("stream %s broke: %r", rid, exc)
            # The status line is gone already: tell the client in-band, as OpenAI does. Only
            # whole events were relayed, so the error is an event of its own.
            yield _sse_error(call.endpoint, message, relayed)
        finally:
            await stack.aclose()
            await asyncio.shield(self._finish(rid, call, started, outcome))

    async def _finish(self, rid: str, call: Call, started: float, outcome: Outcome) -> None:
        self.metrics.observe_request(
            call.endpoint, "default", outcome.status, time.perf_counter() - started
        )
        try:
            await self.tracking.submit(RealtimeEnd(rid, outcome))
        except Exception as exc:  # the reaper will close the row
            log.warning("could not record the end of %s: %s", rid, exc)


def _outcome(
    call: Call, rid: str, status: int, content: bytes, headers: dict[str, str]
) -> tuple[Outcome, bytes]:
    """The row's outcome, and the body to send: stamped with our id (so it can be fetched),
    or, for an error, in OpenAI's shape."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if status >= 400:
        normalized = normalize_error(status, content, headers.get("content-type"))
        if normalized != body:
            content = json.dumps(normalized, separators=(",", ":")).encode()
        error = normalized["error"]
        outcome = Outcome(
            status=Status.FAILED,
            response_status=status,
            response_body=normalized,
            error={"code": error["code"] or upstream_status(status), "message": error["message"]},
        )
        return outcome, content
    given, produced, total = usage_of(body)
    keep = call.endpoint in STORE_BODY_ENDPOINTS and isinstance(body, dict)
    if keep:
        content = _stamp_id(content, body, rid)
    outcome = Outcome(
        status=Status.COMPLETED,
        response_status=status,
        response_body=body if keep else None,
        input_tokens=given,
        output_tokens=produced,
        total_tokens=total,
    )
    return outcome, content


def _stamp_id(content: bytes, body: dict[str, Any], rid: str) -> bytes:
    """The body with our id instead of the upstream's (``body`` is updated too).

    A byte splice of the compact ``"id":"..."`` pair when it is there (the usual case: no
    re-encoding of the whole body on the hot path), else a full re-encode.
    """
    old = body.get("id")
    body["id"] = rid
    if isinstance(old, str):
        pair = b'"id":' + json.dumps(old).encode()
        if pair in content:
            return content.replace(pair, b'"id":' + json.dumps(rid).encode(), 1)
    return json.dumps(body, separators=(",", ":")).encode()


def events_end(data: bytes) -> int:
    """The index just past the last complete server-sent event in ``data`` (0 if none)."""
    ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := data.rfind(sep)) >= 0]
    return max(ends, default=0)


def events_in(data: bytes, end: int) -> int:
    """How many events end in ``data[:end]`` (each ends with a blank line)."""
    return data.count(b"\n\n", 0, end) + data.count(b"\r\n\r\n", 0, end)


def _sse_error(endpoint: str, message: str, events_sent: int) -> bytes:
    """An in-band error as each API sends it: a Responses ``error`` event, or a chat chunk
    holding ``error`` (which the SDK raises as ``APIError``)."""
    code = ErrorCode.UPSTREAM_STREAM_BROKEN
    if endpoint == "/v1/responses":
        event = {
            "type": "error",
            "code": code,
            "message": message,
            "param": None,
            "sequence_number": events_sent,
        }
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
    chunk = error_body(message, type="server_error", code=code)
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _settle(task: asyncio.Future[None]) -> None:
    with contextlib.suppress(BaseException):
        await task
