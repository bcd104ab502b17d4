"""Realtime calls: forward to the upstream at once, streaming passed through as it arrives.

The request row is inserted while the upstream call is already under way and before the
client gets a byte, so every answered call has a durable trace; a gateway crash mid-call
leaves the row ``in_progress`` until the reaper marks it ``gateway_interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import Response, StreamingResponse

from app.ids import request_id
from app.metrics import Metrics
from app.openai.errors import APIError, error_body
from app.openai.upstream_errors import normalize_error
from app.openai.usage import StreamUsage, estimate_usage, usage_of
from app.openai.validation import Call
from app.pricing import PriceBook
from app.store.db import database_unavailable
from app.store.group_commit import GroupCommit
from app.store.keys import ApiKey
from app.store.outcomes import Outcome
from app.store.realtime import RealtimeEnd, RealtimeStart, RealtimeTracker
from app.upstream.client import UpstreamClient, UpstreamError, read_all, retry_after, within
from app.upstream.deployment import Deployment
from app.upstream.reasons import reason
from app.upstream.router import NoCapacity, Router
from app.vocabulary import ErrorCode, Header, PriceTier, Status, error, upstream_status

log = logging.getLogger("tiergate.proxy")

# Embedding vectors are bulky and rarely worth keeping; their usage is stored all the same.
STORE_BODY_ENDPOINTS = frozenset({"/v1/responses", "/v1/chat/completions"})
PASS_HEADERS = ("content-type", "retry-after", "retry-after-ms", "openai-processing-ms")


# Failures of a call whose request never got an answer: another deployment may take it.
RETRY_ELSEWHERE = frozenset({ErrorCode.UPSTREAM_UNREACHABLE, ErrorCode.UPSTREAM_TIMEOUT})


@dataclass
class Opened:
    """A deployment's answer: ``content`` read whole, or ``None`` for a stream to relay."""

    deployment: Deployment
    response: httpx.Response
    stack: contextlib.AsyncExitStack
    content: bytes | None


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
        gateway_id: str | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.prices = prices
        self.router = router
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
        try:
            opened = await self._route(call)
        except (UpstreamError, NoCapacity) as exc:
            await record
            raise await self._failed(rid, call, started, exc) from None
        except BaseException:
            await _settle(record)
            raise
        try:
            await record
        except BaseException:
            await opened.stack.aclose()
            self.router.end(opened.deployment, telling=False)
            raise
        upstream, deployment = opened.response, opened.deployment
        served = deployment.label(call.model.name)
        headers = {k: v for k, v in upstream.headers.items() if k in PASS_HEADERS}
        headers["x-request-id"] = rid
        headers[Header.DEPLOYMENT] = served
        # A fallback model's answer names the model the client asked for.
        fallback = deployment.model is not call.model
        renamed = (
            deployment.target_model,
            call.model.name if fallback else deployment.target_model,
        )
        if opened.content is None:
            return StreamingResponse(
                self._relay(rid, call, started, opened, renamed),
                status_code=upstream.status_code,
                headers=headers,
            )
        content = _renamed(opened.content, *renamed)
        if upstream.status_code >= 400:  # in OpenAI's shape, whatever the provider sent
            headers["content-type"] = "application/json"
        outcome, content = _outcome(call, rid, upstream.status_code, content, served, headers)
        # Recorded before answering: once the client has its answer, so has the row.
        await self._finish(rid, call, started, outcome)
        return Response(content, status_code=upstream.status_code, headers=headers)

    async def _route(self, call: Call) -> Opened:
        """The first answer worth giving, trying deployments then fallback models.

        A deployment that fails before any byte reached the client (no connection, a timeout,
        a 429 or a 5xx) is left for the next candidate, within ``max_attempts`` calls and
        ``route_timeout_s`` of waiting for a usable one. The last failure is the answer when
        no candidate is left; ``NoCapacity`` when none could be tried at all.
        """
        model = call.model
        deadline = self.router.clock() + model.route_timeout_s
        tried: list[Deployment] = []
        failure: Opened | UpstreamError | None = None
        while len(tried) < model.max_attempts:
            try:
                deployment = await self.router.acquire(
                    model.name, pin=call.pin, tried=tried, deadline=deadline
                )
            except NoCapacity:
                if failure is None:
                    raise
                break
            if deployment is None:
                break
            tried.append(deployment)
            try:
                opened = await self._open(call, deployment)
            except UpstreamError as exc:
                self.router.end(deployment, fault=exc.code)
                failure = exc
                if exc.code in RETRY_ELSEWHERE:
                    continue
                raise
            except BaseException:
                self.router.end(deployment, telling=False)
                raise
            status = opened.response.status_code
            if status == 429 or status >= 500:
                rest = retry_after(opened.response.headers) or 1.0
                if status == 429:
                    self.router.end(deployment, rest_s=rest)
                else:
                    self.router.end(deployment, fault=f"HTTP {status}")
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
        stack = contextlib.AsyncExitStack()
        try:
            # A stream's timeout_s bounds each wait for a chunk; any other call's, the whole of it.
            async with contextlib.nullcontext() if call.stream else within(call.model.timeout_s):
                upstream = await stack.enter_async_context(
                    self.upstream.open(deployment, call.endpoint, call.body)
                )
                relay = call.stream and upstream.status_code < 400
                content = None if relay else await read_all(upstream)
        except BaseException:
            await stack.aclose()
            raise
        if content is not None:
            await stack.aclose()
        return Opened(deployment, upstream, stack, content)

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
        self, rid: str, call: Call, started: float, opened: Opened, renamed: tuple[str, str]
    ) -> AsyncIterator[bytes]:
        upstream, deployment = opened.response, opened.deployment
        served = deployment.label(call.model.name)
        fault: str | None = None
        watcher = StreamUsage()
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
        try:
            async for chunk in upstream.aiter_bytes():
                watcher.feed(chunk)
                data = pending + chunk
                cut = events_end(data)
                pending = data[cut:]
                if cut:
                    relayed += events_in(data, cut)
                    yield _renamed(data[:cut], *renamed)
            if pending:
                yield _renamed(pending, *renamed)
            outcome = Outcome(
                status=Status.FAILED if watcher.failed else Status.COMPLETED,
                response_status=upstream.status_code,
                usage=watcher.usage,
                deployment=served,
            )
        except Exception as exc:
            fault = ErrorCode.UPSTREAM_STREAM_BROKEN
            message = f"The upstream stream broke: {reason(exc)}"
            outcome = Outcome(
                status=Status.FAILED,
                response_status=upstream.status_code,
                error={"code": ErrorCode.UPSTREAM_STREAM_BROKEN, "message": message},
                deployment=served,
            )
            log.info("stream %s broke: %r", rid, exc)
            # The status line is gone already: tell the client in-band, as OpenAI does. Only
            # whole events were relayed, so the error is an event of its own.
            yield _sse_error(call.endpoint, message, relayed)
        finally:
            await opened.stack.aclose()
            self.router.end(deployment, fault=fault, telling=outcome.status == Status.COMPLETED)
            await asyncio.shield(self._finish(rid, call, started, outcome))

    def _priced(self, call: Call, outcome: Outcome) -> Outcome:
        """The outcome with its usage (estimated if the upstream reported none) and cost,
        counted in the metrics."""
        usage = outcome.usage
        if not usage.known:
            usage = estimate_usage(call.body, outcome.response_body)
        tier = PriceTier.DEFAULT
        cost = self.prices.cost(call.model.name, outcome.deployment, tier, usage)
        self.metrics.observe_usage(call.model.name, tier, call.key_name, usage, cost)
        return dataclasses.replace(outcome, usage=usage, cost_usd=cost)

    async def _finish(self, rid: str, call: Call, started: float, outcome: Outcome) -> None:
        self.metrics.observe_request(
            call.endpoint, "default", outcome.status, time.perf_counter() - started
        )
        if outcome.status == Status.COMPLETED:
            outcome = self._priced(call, outcome)
        try:
            await self.tracking.submit(RealtimeEnd(rid, outcome))
        except Exception as exc:  # the reaper will close the row
            log.warning("could not record the end of %s: %s", rid, exc)


def _renamed(content: bytes, served: str, asked: str) -> bytes:
    """``content`` naming the model the client asked for, not the deployment's own name."""
    if served == asked:
        return content
    for sep in (b'":"', b'": "'):
        content = content.replace(
            b'"model' + sep + served.encode() + b'"', b'"model' + sep + asked.encode() + b'"'
        )
    return content


def _outcome(
    call: Call,
    rid: str,
    status: int,
    content: bytes,
    deployment: str,
    headers: dict[str, str],
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
            deployment=deployment,
        )
        return outcome, content
    keep = call.endpoint in STORE_BODY_ENDPOINTS and isinstance(body, dict)
    if keep:
        content = _stamp_id(content, body, rid)
    outcome = Outcome(
        status=Status.COMPLETED,
        response_status=status,
        response_body=body if keep else None,
        usage=usage_of(body),
        deployment=deployment,
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
