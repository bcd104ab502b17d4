"""A fake OpenAI-compatible provider for demos, tests and load tests.

Serves ``POST /v1/responses``, ``POST /v1/chat/completions`` and ``POST /v1/embeddings``
(texts or token arrays, ``[1, 2, 3]`` or ``[[1, 2], [3]]``) with deterministic echo output
(``"echo: " + <last user text>``), plus ``GET /healthz``, ``GET /_mock/stats`` (requests
per path), ``GET /_mock/attempts/{key}`` (every request that carried ``key=NAME``, in arrival
order: ``{"at": unix seconds, "path", "status", "drop", "sleep_ms", "trickle_ms", "headers",
"body"}``, i.e. when it arrived, what it was answered, the headers and body it came with),
``POST /_mock/reset`` (clears all counters, records, files and batch jobs) and
``POST /_mock/outage`` (``{"status": 503}``: every API call fails so until ``{"status": null}``).

It also serves, in memory, OpenAI's Files and Batch APIs (``/v1/files``, ``/v1/batches``) and
Anthropic's Message Batches (``/v1/messages/batches``): each line of a job is answered by the
same code as the realtime route of its URL, so the controls below work per line; a job's own
controls (``turnaround_ms``, ``job_fail``, ``job_expire``, ``expire_after``, ``lose``,
``garbage``, ``drop_lines``, ``extra_lines``) are read from the header of its create call.
See ``app/mock/batch_api.py`` for the endpoints, shapes, controls and how ``/_mock/stats``
counts them.

``mock-upstream --engine vllm|sglang|llamacpp`` (engine mode, ``app/mock/engine.py``) serves
API calls as that inference engine does: ``--capacity`` running slots (default 8), each call
holding one for ``latency_ms + sleep_ms`` of service time in steps of ``--step-ms``, the rest
waiting first come first served or, with ``--scheduling-policy priority``, by the body's
``priority`` field with preemption; a ``priority`` the engine would refuse is refused as it
does (vLLM under ``fcfs``: 400). Batch-job lines are not scheduled. It adds ``GET /metrics``
(the engine's Prometheus text with its real series names: requests running and waiting, KV-cache
use), ``GET /_mock/engine`` (``{"engine", "scheduling_policy", "capacity", "running",
"waiting", "preemptions", "served", "by_priority", ...controls}``) and ``POST /_mock/engine``
with any of ``{"extra_waiting": N, "extra_running": N}`` (added to the published counts: load
that never came through the gateway), ``"kv_cache": 0.0-1.0 | null`` (overrides the published
KV use), ``"metrics": "ok" | "garbage" | "missing" | "error" | "disabled"`` (unparseable text;
without the three series; a 500; as the engine with its metrics off) and ``"refuse_priority":
bool`` (a bad value is a 400); ``POST /_mock/reset`` resets them. Without ``--engine``
``/metrics`` is a 404.

Behaviour can be forced per request with magic controls, read from the ``x-mock-behavior``
header and/or from the input text when it starts with ``mock:`` (header values win).
Controls are ``key=value`` tokens separated by commas or whitespace, e.g.
``x-mock-behavior: status=429,retry_after=1`` or input ``"mock:fail_times=2,key=a hello"``:

* ``status=N`` (400-599): answer N with an OpenAI error body.
* ``error_format=F``: the shape of error answers: ``openai`` (the default), ``detail``
  (``{"detail": "..."}`` as llama-cpp-python's server answers), ``text`` (plain text) or
  ``html`` (an error page, as a proxy in front of a provider answers).
* ``error_code=NAME``: the ``code`` of an OpenAI-shaped error answer (else the status's own).
* ``retry_after=S``: add ``Retry-After: S`` to error answers.
* ``sleep_ms=N``: extra latency for this request (before the answer's status line).
* ``trickle_ms=N``: send the answer in 8 parts, N ms apart (each gap can be shorter than a
  client's read timeout while the whole answer takes longer than its total timeout).
* ``key=NAME``: record the request under NAME (see ``/_mock/attempts/{key}``).
* ``fail_times=K,key=NAME``: the first K requests carrying that key (counted on arrival) fail,
  later ones succeed at once. A failing request does what the other controls say: it
  sleeps ``sleep_ms`` (a client with a shorter timeout sees a timeout), then is dropped if
  ``drop=1``, else answers ``status`` if given, or 500 when none of ``sleep_ms``,
  ``trickle_ms`` and ``drop`` is (a slow failure is a late 200); a request that succeeds
  ignores ``status``, ``sleep_ms``, ``trickle_ms`` and ``drop``. So
  ``sleep_ms=3000,fail_times=1,key=k`` is slow only the first time and
  ``drop=1,fail_times=2,key=k`` drops twice. Counters live in
  ``app.state.fail_counts``.
* ``hold=NAME``: streaming only; after the first frame, wait for ``POST /_mock/release/NAME``.
* ``linger=NAME``: streaming only; after the last frame, keep the body open until
  ``POST /_mock/release/NAME`` (a server slow to end its body after ``[DONE]``).
* ``usage=0``: the answer reports no usage (as llama.cpp's server); ``cached=N`` and
  ``reasoning=N``: that many input tokens were cached and output tokens were reasoning.
* ``drop=1``: send the status line and headers, part of the body, then abort the connection
  (the ASGI app raises :class:`MockDropError` mid-body, so uvicorn closes the socket and a
  client sees an incomplete body, e.g. ``httpx.RemoteProtocolError``; in-process
  ``httpx.ASGITransport`` re-raises the error instead). A status line cannot be withheld:
  uvicorn answers 500 if an app fails before starting its response. :func:`run` hides the
  resulting uvicorn tracebacks; other servers will log them.

``mock-upstream --api chat`` is a chat-only server (see ``MOCK_APIS``): ``/v1/responses``
answers 404 ``{"detail": "Not Found"}``; a chat request with ``tools`` is answered with a call
of the first (or the ``tool_choice``) function, arguments ``{"text": <last user text>}``; after
a ``tool`` message the answer is ``tool said: <its content>``; a JSON ``response_format`` gets
``{"echo": <text>}``; ``max_tokens`` cuts the answer to that many words (``finish_reason:
length``). ``--api legacy`` also refuses ``max_completion_tokens`` (400).

Tokens without ``=`` are ignored (so prose may follow); unknown keys or bad values are a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.mock.batch_api import batch_routes
from app.mock.batch_jobs import BatchStore, LineAnswer, LineReply
from app.mock.controls import (
    BEHAVIOR_HEADER,
    BadRequestError,
    Controls,
    parse_controls,
    plan_for,
)
from app.mock.engine import (
    DEFAULT_CAPACITY,
    DEFAULT_STEP_MS,
    MockEngine,
    Refusal,
)
from app.mock.payloads import (
    SSE_MEDIA_TYPE,
    chat_only_payload,
    chat_only_sse,
    chat_payload,
    chat_sse,
    chat_text,
    dumps,
    embeddings_payload,
    embeddings_text,
    error_body,
    error_payload,
    responses_payload,
    responses_sse,
    responses_text,
    shape_usage,
)


class MockDropError(Exception):
    """Raised mid-body to make the server abort the connection (``drop=1``)."""


@dataclass(frozen=True)
class MockConfig:
    """App-wide knobs."""

    latency_ms: float
    fail_rate: float
    api: str = "responses"  # or "chat" / "legacy": see MOCK_APIS


# ``responses``: both APIs, as OpenAI and recent vLLM. ``chat``: no /v1/responses (404
# ``{"detail": "Not Found"}``, as llama-cpp-python's server), chat answers with tool calls,
# JSON formats and token limits. ``legacy``: ``chat``, and ``max_completion_tokens`` is an
# unknown field (400), as servers that only know ``max_tokens``.
MOCK_APIS = ("responses", "chat", "legacy")


def _error_response(
    status: int,
    message: str,
    param: str | None = None,
    retry_after: str | None = None,
    error_format: str = "openai",
    error_code: str | None = None,
) -> Response:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    if error_format == "openai":
        body = error_body(status, message, param)
        if error_code is not None:
            body["error"]["code"] = error_code
        return JSONResponse(body, status_code=status, headers=headers)
    content, media_type = error_payload(status, message, error_format)
    return Response(content, status_code=status, headers=headers, media_type=media_type)


async def _read_json(request: Request) -> dict[str, Any]:
    return _parse_json(await request.body())


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequestError("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequestError("The request body must be a JSON object.")
    return body


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return dumps(payload).encode()


async def _aborting(frames: list[bytes]) -> AsyncIterator[bytes]:
    """Yield roughly the first half of ``frames`` and half of the next one, then abort: the
    connection breaks mid-event, as a real one does."""
    whole = frames[: len(frames) // 2]
    for frame in whole:
        yield frame
    cut = frames[len(whole)]
    yield cut[: max(1, len(cut) // 2)]
    raise MockDropError("mock upstream dropped the connection (drop=1)")


async def _iterate(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


def _stream(frames: list[bytes], media_type: str, drop: bool) -> Response:
    body = _aborting(frames) if drop else _iterate(frames)
    headers = {"cache-control": "no-cache"} if media_type == SSE_MEDIA_TYPE else None
    return StreamingResponse(body, media_type=media_type, headers=headers)


def _json_or_drop(payload: dict[str, Any], drop: bool) -> Response:
    if drop:
        return _stream([_json_bytes(payload)], "application/json", drop=True)
    return JSONResponse(payload)


def _shaper(controls: Controls) -> Callable[[Any], None]:
    return lambda obj: shape_usage(obj, controls.usage, controls.cached, controls.reasoning)


def _reply_responses(body: dict[str, Any], text: str, drop: bool, controls: Controls) -> Response:
    shape = _shaper(controls)
    if body.get("stream") is True:
        frames = responses_sse(body["model"], text, shape=shape)
        return _stream(frames, SSE_MEDIA_TYPE, drop)
    payload = responses_payload(body["model"], text)
    shape(payload)
    return _json_or_drop(payload, drop)


def _reply_chat(body: dict[str, Any], text: str, drop: bool, controls: Controls) -> Response:
    shape = _shaper(controls)
    if body.get("stream") is True:
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        include_usage = include_usage and controls.usage
        frames = chat_sse(body["model"], text, include_usage, shape=shape)
        return _stream(frames, SSE_MEDIA_TYPE, drop)
    payload = chat_payload(body["model"], text)
    shape(payload)
    return _json_or_drop(payload, drop)


def _reply_chat_only(legacy: bool) -> ReplyFn:
    def reply(body: dict[str, Any], text: str, drop: bool, controls: Controls) -> Response:
        try:
            if body.get("stream") is True:
                return _stream(chat_only_sse(body, text, legacy), SSE_MEDIA_TYPE, drop)
            payload = chat_only_payload(body, text, legacy)
            _shaper(controls)(payload)
            return _json_or_drop(payload, drop)
        except BadRequestError as exc:
            return _error_response(400, exc.message, exc.param)

    return reply


def _reply_embeddings(body: dict[str, Any], text: str, drop: bool, controls: Controls) -> Response:
    payload = embeddings_payload(body)
    _shaper(controls)(payload)
    return _json_or_drop(payload, drop)


TextFn = Callable[[dict[str, Any]], str]


ReplyFn = Callable[[dict[str, Any], str, bool, Controls], Response]


@dataclass(frozen=True)
class Call:
    """One API call to answer: the path it is counted and recorded under, its headers and
    its raw body (an HTTP request, or a line of a batch job)."""

    path: str
    headers: Mapping[str, str]
    raw: bytes
    via_engine: bool = True  # in engine mode: scheduled by it (batch lines are not)


async def _serve(request: Request, text_of: TextFn, reply: ReplyFn) -> Response:
    call = Call(request.url.path, request.headers, await request.body())
    return await _serve_call(request.app.state, call, text_of, reply)


async def _serve_call(state: Any, call: Call, text_of: TextFn, reply: ReplyFn) -> Response:
    """Count, parse, plan, record, delay, then fail or answer."""
    path = call.path
    state.counts[path] = state.counts.get(path, 0) + 1
    engine: MockEngine | None = state.engine if call.via_engine else None
    try:
        body = _parse_json(call.raw)
        text = text_of(body)
        controls = parse_controls(call.headers.get(BEHAVIOR_HEADER), text)
        priority = engine.priority_of(body) if engine is not None else None
    except BadRequestError as exc:
        await asyncio.sleep(state.config.latency_ms / 1000)
        return _error_response(400, exc.message, exc.param)
    plan = plan_for(state, controls)
    refusal: Refusal | None = None
    if state.outage is not None:
        plan = dataclasses.replace(
            plan, status=state.outage, drop=False, message="The mock provider is in an outage."
        )
    elif engine is not None and (refusal := engine.refusal(priority, path)) is not None:
        plan = dataclasses.replace(
            plan, status=refusal.status, drop=False, sleep_ms=0.0, trickle_ms=0.0
        )
    if controls.key is not None:
        state.attempts.setdefault(controls.key, []).append(
            {
                "at": time.time(),
                "path": path,
                "status": plan.status or 200,
                "drop": plan.drop,
                "sleep_ms": plan.sleep_ms,
                "trickle_ms": plan.trickle_ms,
                "headers": {
                    k: v for k, v in call.headers.items() if k not in ("host", "content-length")
                },
                "body": body,
            }
        )
    if refusal is not None:  # the engine refuses it on arrival
        return JSONResponse(refusal.body, status_code=refusal.status)
    model = str(body.get("model"))
    state.inflight[model] = state.inflight.get(model, 0) + 1
    state.peaks[model] = max(state.peaks.get(model, 0), state.inflight[model])
    try:
        service_ms = state.config.latency_ms + plan.sleep_ms
        if engine is not None:  # a running slot, then the service time: see app/mock/engine.py
            await engine.serve(priority, service_ms)
        else:
            # Beyond ``capacity`` calls wait their turn inside, as in a saturated inference server.
            async with state.capacity or contextlib.nullcontext():
                await asyncio.sleep(service_ms / 1000)
    finally:
        state.inflight[model] -= 1
    if plan.status is not None:
        return _error_response(
            plan.status,
            plan.message,
            retry_after=plan.retry_after,
            error_format=plan.error_format,
            error_code=plan.error_code,
        )
    response = reply(body, text, plan.drop, controls)
    if plan.trickle_ms:
        response = _trickled(response, plan.trickle_ms / 1000)
    if controls.hold and isinstance(response, StreamingResponse):
        response.body_iterator = _held(response.body_iterator, state.holds, controls.hold)
    if controls.linger and isinstance(response, StreamingResponse):
        response.body_iterator = _lingering(response.body_iterator, state.holds, controls.linger)
    return response


TRICKLE_PARTS = 8


def _trickled(response: Response, gap_s: float) -> StreamingResponse:
    """The same answer, its body sent in ``TRICKLE_PARTS`` parts ``gap_s`` apart."""

    async def parts(frames: AsyncIterable[Any]) -> AsyncIterator[bytes]:
        body = b"".join([bytes(frame) async for frame in frames])
        size = -(-len(body) // TRICKLE_PARTS)
        for start in range(0, len(body), size):
            if start:
                await asyncio.sleep(gap_s)
            yield body[start : start + size]

    if isinstance(response, StreamingResponse):
        frames = response.body_iterator
    else:
        frames = _iterate([bytes(response.body)])
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return StreamingResponse(parts(frames), status_code=response.status_code, headers=headers)


async def _held(
    frames: AsyncIterable[Any], holds: dict[str, asyncio.Event], name: str
) -> AsyncIterator[Any]:
    """Send the first frame, then wait for ``POST /_mock/release/{name}`` (``hold=NAME``)."""
    event = holds.setdefault(name, asyncio.Event())
    first = True
    async for frame in frames:
        yield frame
        if first:
            first = False
            await event.wait()


async def _lingering(
    frames: AsyncIterable[Any], holds: dict[str, asyncio.Event], name: str
) -> AsyncIterator[Any]:
    """Send every frame, then wait for ``POST /_mock/release/{name}`` (``linger=NAME``)."""
    async for frame in frames:
        yield frame
    await holds.setdefault(name, asyncio.Event()).wait()


async def _release(request: Request) -> Response:
    request.app.state.holds.setdefault(request.path_params["name"], asyncio.Event()).set()
    return JSONResponse({"ok": True})


def _handlers(api: str) -> dict[str, tuple[TextFn, ReplyFn]]:
    """How each API path is answered on a server of ``api`` (see ``MOCK_APIS``)."""
    chat = _reply_chat if api == "responses" else _reply_chat_only(api == "legacy")
    handlers: dict[str, tuple[TextFn, ReplyFn]] = {
        "/v1/chat/completions": (chat_text, chat),
        "/v1/embeddings": (embeddings_text, _reply_embeddings),
    }
    if api == "responses":
        handlers["/v1/responses"] = (responses_text, _reply_responses)
    return handlers


def _as_bytes(part: Any) -> bytes:
    return part.encode() if isinstance(part, str) else bytes(part)


async def _collected(response: Response) -> LineReply:
    """A whole answer as a batch line sees it (a dropped one is a 500)."""
    if isinstance(response, StreamingResponse):
        try:
            parts = [_as_bytes(part) async for part in response.body_iterator]
        except MockDropError:
            return LineReply(500, error_body(500, "mock upstream dropped the answer (drop=1)"))
        raw = b"".join(parts)
    else:
        raw = bytes(response.body)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = raw.decode(errors="replace")
    return LineReply(response.status_code, body)


def _line_answerer(state: Any) -> LineAnswer:
    """Answers a batch job's line in process with the same code as the HTTP route of its URL
    (counted and recorded under ``counted``; its controls are those in its input text)."""

    async def answer(counted: str, url: str, raw: bytes) -> LineReply:
        handler = _handlers(state.config.api).get(url)
        if handler is None:  # as the HTTP route answers (a chat-only server's /v1/responses)
            state.counts[counted] = state.counts.get(counted, 0) + 1
            return LineReply(404, {"detail": "Not Found"})
        line = Call(counted, {}, raw, via_engine=False)
        return await _collected(await _serve_call(state, line, *handler))

    return answer


async def _responses(request: Request) -> Response:
    state = request.app.state
    if state.config.api != "responses":  # a chat-only server has no such route
        path = request.url.path
        state.counts[path] = state.counts.get(path, 0) + 1
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    return await _serve(request, responses_text, _reply_responses)


async def _chat(request: Request) -> Response:
    handlers = _handlers(request.app.state.config.api)
    return await _serve(request, *handlers["/v1/chat/completions"])


async def _embeddings(request: Request) -> Response:
    return await _serve(request, embeddings_text, _reply_embeddings)


async def _healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _stats(request: Request) -> Response:
    return JSONResponse(dict(request.app.state.counts))


async def _attempts(request: Request) -> Response:
    """Every request that carried ``key=NAME``, in arrival order (tests check retries)."""
    key = request.path_params["key"]
    return JSONResponse({"key": key, "attempts": request.app.state.attempts.get(key, [])})


async def _peaks(request: Request) -> Response:
    """The most requests each model had in flight at once (tests check concurrency caps)."""
    return JSONResponse(dict(request.app.state.peaks))


async def _outage(request: Request) -> Response:
    """``{"status": 503}`` makes every API call fail with that status; ``null`` ends it."""
    status = (await _read_json(request)).get("status")
    if status is not None and not (isinstance(status, int) and 400 <= status <= 599):
        return _error_response(400, "status must be null or 400-599", "status")
    request.app.state.outage = status
    return JSONResponse({"outage": status})


async def _reset(request: Request) -> Response:
    request.app.state.peaks.clear()
    request.app.state.counts.clear()
    request.app.state.fail_counts.clear()
    request.app.state.attempts.clear()
    request.app.state.batch_store.clear()
    if request.app.state.engine is not None:
        request.app.state.engine.reset()
    return JSONResponse({"ok": True})


async def _metrics(request: Request) -> Response:
    """The engine's Prometheus text (engine mode only)."""
    answer = request.app.state.engine.metrics()
    return Response(answer.text, status_code=answer.status, media_type=answer.media_type)


async def _engine(request: Request) -> Response:
    """``GET``: the engine's state; ``POST``: set its controls (engine mode only)."""
    engine: MockEngine = request.app.state.engine
    if request.method == "POST":
        try:
            engine.apply(await _read_json(request))
        except BadRequestError as exc:
            return _error_response(400, exc.message, exc.param)
    return JSONResponse(engine.describe())


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error_response(status, f"{detail}: {request.method} {request.url.path}")


def create_mock_app(
    *,
    latency_ms: float = 0.0,
    fail_rate: float = 0.0,
    seed: int | None = None,
    capacity: int | None = None,
    api: str = "responses",
    engine: str | None = None,
    scheduling_policy: str = "fcfs",
    step_ms: float = DEFAULT_STEP_MS,
    model_name: str = "mock-model",
) -> Starlette:
    """Build the mock provider app.

    ``latency_ms`` delays every API answer; ``fail_rate`` is the probability of a 500;
    ``seed`` seeds the RNG used for ``fail_rate``; ``capacity`` is how many calls it serves at
    once (the others queue, so latency grows, as a saturated vLLM's does); ``api`` is one
    of ``MOCK_APIS``. ``engine`` (one of ``ENGINES``) serves calls as that engine does, with
    ``capacity`` running slots (default 8), ``scheduling_policy`` and steps of ``step_ms``,
    and publishes its ``/metrics`` (labelled ``model_name``): see app/mock/engine.py.
    """
    if api not in MOCK_APIS:
        raise ValueError(f"api must be one of {MOCK_APIS}")
    if engine is None and scheduling_policy != "fcfs":
        raise ValueError("scheduling_policy needs an engine")
    mock_engine = None
    if engine is not None:
        mock_engine = MockEngine(
            engine, scheduling_policy, capacity or DEFAULT_CAPACITY, step_ms, model_name
        )
    if latency_ms < 0:
        raise ValueError("latency_ms must be >= 0")
    if not 0.0 <= fail_rate <= 1.0:
        raise ValueError("fail_rate must be in [0, 1]")
    routes = [
        Route("/v1/responses", _responses, methods=["POST"]),
        Route("/v1/chat/completions", _chat, methods=["POST"]),
        Route("/v1/embeddings", _embeddings, methods=["POST"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/_mock/stats", _stats, methods=["GET"]),
        Route("/_mock/peaks", _peaks, methods=["GET"]),
        Route("/_mock/attempts/{key}", _attempts, methods=["GET"]),
        Route("/_mock/release/{name}", _release, methods=["POST"]),
        Route("/_mock/reset", _reset, methods=["POST"]),
        Route("/_mock/outage", _outage, methods=["POST"]),
        *batch_routes(),
    ]
    if mock_engine is not None:
        routes += [
            Route("/metrics", _metrics, methods=["GET"]),
            Route("/_mock/engine", _engine, methods=["GET", "POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.config = MockConfig(latency_ms=latency_ms, fail_rate=fail_rate, api=api)
    app.state.rng = random.Random(seed)
    app.state.counts = {}
    app.state.fail_counts = {}
    app.state.attempts = {}
    app.state.inflight = {}
    app.state.peaks = {}
    app.state.holds = {}
    app.state.outage = None
    app.state.engine = mock_engine
    app.state.capacity = asyncio.Semaphore(capacity) if capacity and not mock_engine else None
    app.state.batch_store = BatchStore(answer=_line_answerer(app.state))
    return app


class _HideDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every deliberate ``drop=1``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], MockDropError))


def run(
    host: str,
    port: int,
    latency_ms: float,
    fail_rate: float,
    capacity: int | None = None,
    api: str = "responses",
    engine: str | None = None,
    scheduling_policy: str = "fcfs",
    step_ms: float = DEFAULT_STEP_MS,
) -> None:
    """Serve the mock provider with uvicorn (log level "warning") until interrupted; a bad
    combination of options raises ValueError before it listens."""
    app = create_mock_app(
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        capacity=capacity,
        api=api,
        engine=engine,
        scheduling_policy=scheduling_policy,
        step_ms=step_ms,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    logging.getLogger("uvicorn.error").addFilter(_HideDrops())
    uvicorn.Server(config).run()
