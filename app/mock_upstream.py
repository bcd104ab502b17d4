"""A fake OpenAI-compatible provider for demos, tests and load tests.

Serves ``POST /v1/responses``, ``POST /v1/chat/completions`` and ``POST /v1/embeddings``
with deterministic echo output (``"echo: " + <last user text>``), plus ``GET /healthz``,
``GET /_mock/stats`` (requests per path), ``GET /_mock/attempts/{key}`` (every request that
carried ``key=NAME``, in arrival order: ``{"at": unix seconds, "path", "status", "drop",
"sleep_ms", "trickle_ms"}``, i.e. when it arrived and what it was answered) and
``POST /_mock/reset`` (clears all counters and records).

Behaviour can be forced per request with magic controls, read from the ``x-mock-behavior``
header and/or from the input text when it starts with ``mock:`` (header values win).
Controls are ``key=value`` tokens separated by commas or whitespace, e.g.
``x-mock-behavior: status=429,retry_after=1`` or input ``"mock:fail_times=2,key=a hello"``:

* ``status=N`` (400-599): answer N with an OpenAI error body.
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
* ``drop=1``: send the status line and headers, part of the body, then abort the connection
  (the ASGI app raises :class:`MockDropError` mid-body, so uvicorn closes the socket and a
  client sees an incomplete body, e.g. ``httpx.RemoteProtocolError``; in-process
  ``httpx.ASGITransport`` re-raises the error instead). A status line cannot be withheld:
  uvicorn answers 500 if an app fails before starting its response. :func:`run` hides the
  resulting uvicorn tracebacks; other servers will log them.

Tokens without ``=`` are ignored (so prose may follow); unknown keys or bad values are a 400.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import random
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BEHAVIOR_HEADER = "x-mock-behavior"
INPUT_PREFIX = "mock:"
DEFAULT_EMBEDDING_DIM = 8
MAX_EMBEDDING_DIM = 8192
SSE_MEDIA_TYPE = "text/event-stream"

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
_CONTROL_KEYS = frozenset(
    {"status", "retry_after", "sleep_ms", "trickle_ms", "fail_times", "key", "drop", "hold"}
)


class MockDropError(Exception):
    """Raised mid-body to make the server abort the connection (``drop=1``)."""


class BadRequestError(Exception):
    """A client error that becomes a 400 with an OpenAI error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class MockConfig:
    """App-wide knobs."""

    latency_ms: float
    fail_rate: float


@dataclass(frozen=True)
class Controls:
    """Per-request magic controls."""

    status: int | None = None
    retry_after: str | None = None
    sleep_ms: float = 0.0
    trickle_ms: float = 0.0
    fail_times: int | None = None
    key: str | None = None
    drop: bool = False
    hold: str | None = None


# --------------------------------------------------------------------------- helpers


def _hex(nbytes: int = 12) -> str:
    return secrets.token_hex(nbytes)


def _now() -> int:
    return int(time.time())


def _word_count(text: str) -> int:
    """Whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def _split_words(text: str) -> list[str]:
    """Split into word deltas (leading whitespace kept) whose concatenation is ``text``."""
    parts = re.findall(r"\s*\S+", text)
    if not parts:
        return [text]
    parts[-1] += text[len("".join(parts)) :]
    return parts


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-format error body for ``status``."""
    default_kind = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    err_type, code = _ERROR_KINDS.get(status, default_kind)
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _error_response(
    status: int, message: str, param: str | None = None, retry_after: str | None = None
) -> JSONResponse:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


# --------------------------------------------------------------------------- controls


def _control_pairs(spec: str) -> Iterator[tuple[str, str]]:
    for token in re.split(r"[,\s]+", spec.strip()):
        if "=" in token:
            key, _, value = token.partition("=")
            yield key.strip().lower(), value.strip()


def _int_value(key: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequestError(f"mock control {key!r} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise BadRequestError(f"mock control {key!r} must be in [{low}, {high}], got {number}")
    return number


def _apply_control(fields: dict[str, Any], key: str, value: str) -> None:
    if key not in _CONTROL_KEYS:
        raise BadRequestError(f"unknown mock control {key!r}")
    if key == "status":
        fields["status"] = _int_value(key, value, 400, 599)
    elif key in ("sleep_ms", "trickle_ms"):
        fields[key] = float(_int_value(key, value, 0, 3_600_000))
    elif key == "fail_times":
        fields["fail_times"] = _int_value(key, value, 0, 1_000_000)
    elif key == "drop":
        fields["drop"] = _int_value(key, value, 0, 1) == 1
    else:  # retry_after, key, hold: free-form strings
        fields[key] = value


def parse_controls(header: str | None, text: str) -> Controls:
    """Merge controls from the input text (``mock:...``) and the header (header wins)."""
    fields: dict[str, Any] = {}
    specs = [text[len(INPUT_PREFIX) :]] if text.startswith(INPUT_PREFIX) else []
    specs += [header] if header else []
    for spec in specs:
        for key, value in _control_pairs(spec):
            _apply_control(fields, key, value)
    return Controls(**fields)


# --------------------------------------------------------------------------- input parsing


def _parts_text(parts: list[Any], types: frozenset[str]) -> str:
    texts = [
        p["text"]
        for p in parts
        if isinstance(p, dict) and isinstance(p.get("text"), str) and p.get("type", "text") in types
    ]
    return " ".join(texts)


def _content_text(content: Any, types: frozenset[str]) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _parts_text(content, types)
    return ""


def _last_user_text(items: list[Any], types: frozenset[str]) -> str:
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return _content_text(item.get("content"), types)
    return ""


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("Missing required parameter: 'model'.", "model")
    return model


def responses_text(body: dict[str, Any]) -> str:
    """Validate a Responses request and return its last user text."""
    _require_model(body)
    value = body.get("input", "")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _last_user_text(value, frozenset({"input_text", "text"}))
    raise BadRequestError("'input' must be a string or a list of items.", "input")


def chat_text(body: dict[str, Any]) -> str:
    """Validate a chat request and return its last user message text."""
    _require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("Missing required parameter: 'messages'.", "messages")
    return _last_user_text(messages, frozenset({"text", "input_text"}))


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequestError("'input' must be a string or a non-empty list of strings.", "input")


def embeddings_text(body: dict[str, Any]) -> str:
    """Validate an embeddings request and return its first input text."""
    _require_model(body)
    _embedding_options(body)
    return _embedding_inputs(body)[0]


async def _read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequestError("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequestError("The request body must be a JSON object.")
    return body


# --------------------------------------------------------------------------- responses API


def _usage(in_text: str, reply: str) -> tuple[int, int]:
    return _word_count(in_text), _word_count(reply)


def _message_item(item_id: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [_output_text_part(text)]
    status = "in_progress" if text is None else "completed"
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response_object(
    resp_id: str, model: str, created: int, item: dict[str, Any] | None, usage: tuple[int, int]
) -> dict[str, Any]:
    done = item is not None
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created,
        "status": "completed" if done else "in_progress",
        "model": model,
        "output": [item] if done else [],
        "usage": _responses_usage(*usage) if done else None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "metadata": {},
        "background": False,
        "service_tier": "default",
    }


def _responses_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def responses_payload(model: str, in_text: str) -> dict[str, Any]:
    """A complete, non-streaming Response object."""
    reply = "echo: " + in_text
    item = _message_item(f"msg_{_hex()}", reply)
    return _response_object(f"resp_mock_{_hex()}", model, _now(), item, _usage(in_text, reply))


def responses_events(model: str, in_text: str) -> list[dict[str, Any]]:
    """The Responses streaming events (without ``sequence_number``), in order."""
    reply = "echo: " + in_text
    resp_id, item_id, created = f"resp_mock_{_hex()}", f"msg_{_hex()}", _now()
    usage = _usage(in_text, reply)
    pending = _response_object(resp_id, model, created, None, usage)
    final = _response_object(resp_id, model, created, _message_item(item_id, reply), usage)
    loc = {"item_id": item_id, "output_index": 0, "content_index": 0}
    deltas = [
        {"type": "response.output_text.delta", **loc, "delta": word, "logprobs": []}
        for word in _split_words(reply)
    ]
    return [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _message_item(item_id, None),
        },
        {"type": "response.content_part.added", **loc, "part": _output_text_part("")},
        *deltas,
        {"type": "response.output_text.done", **loc, "text": reply, "logprobs": []},
        {"type": "response.content_part.done", **loc, "part": _output_text_part(reply)},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]


def responses_sse(model: str, in_text: str) -> list[bytes]:
    """SSE frames for a streamed Response, numbered from 0."""
    frames = []
    for seq, event in enumerate(responses_events(model, in_text)):
        event = {**event, "sequence_number": seq}
        frames.append(f"event: {event['type']}\ndata: {_dumps(event)}\n\n".encode())
    return frames


# --------------------------------------------------------------------------- chat API


def _chat_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def chat_payload(model: str, in_text: str) -> dict[str, Any]:
    """A complete ChatCompletion object."""
    reply = "echo: " + in_text
    message = {"role": "assistant", "content": reply, "refusal": None, "annotations": []}
    return {
        "id": f"chatcmpl-mock{_hex()}",
        "object": "chat.completion",
        "created": _now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": _chat_usage(*_usage(in_text, reply)),
        "service_tier": "default",
    }


def chat_chunks(model: str, in_text: str, include_usage: bool) -> list[dict[str, Any]]:
    """ChatCompletionChunk objects for a streamed chat answer, in order."""
    reply = "echo: " + in_text
    head = {
        "id": f"chatcmpl-mock{_hex()}",
        "object": "chat.completion.chunk",
        "created": _now(),
        "model": model,
        "service_tier": "default",
    }
    if include_usage:
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice]}

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": word}) for word in _split_words(reply)]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({**head, "choices": [], "usage": _chat_usage(*_usage(in_text, reply))})
    return chunks


def chat_sse(model: str, in_text: str, include_usage: bool) -> list[bytes]:
    """SSE frames for a streamed chat answer, ending with ``[DONE]``."""
    frames = [f"data: {_dumps(c)}\n\n".encode() for c in chat_chunks(model, in_text, include_usage)]
    return [*frames, b"data: [DONE]\n\n"]


# --------------------------------------------------------------------------- embeddings API


def embedding_vector(text: str, dim: int) -> list[float]:
    """A deterministic unit vector (float32-exact values) derived from a hash of ``text``."""
    words = struct.unpack(f"<{dim}I", hashlib.shake_256(text.encode()).digest(4 * dim))
    raw = [w / 2**31 - 1.0 for w in words]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(x / norm for x in raw))))


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _embedding_options(body: dict[str, Any]) -> tuple[int, str]:
    dim = body.get("dimensions", DEFAULT_EMBEDDING_DIM)
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_EMBEDDING_DIM:
        raise BadRequestError(
            f"'dimensions' must be an integer in [1, {MAX_EMBEDDING_DIM}].", "dimensions"
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequestError("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return dim, encoding


def embeddings_payload(body: dict[str, Any]) -> dict[str, Any]:
    """A CreateEmbeddingResponse for a validated request body."""
    texts = _embedding_inputs(body)
    dim, encoding = _embedding_options(body)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encode_vector(embedding_vector(t, dim), encoding),
        }
        for i, t in enumerate(texts)
    ]
    tokens = sum(_word_count(t) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": body["model"], "usage": usage}


# --------------------------------------------------------------------------- serving


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return _dumps(payload).encode()


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


def _reply_responses(body: dict[str, Any], text: str, drop: bool) -> Response:
    if body.get("stream") is True:
        return _stream(responses_sse(body["model"], text), SSE_MEDIA_TYPE, drop)
    return _json_or_drop(responses_payload(body["model"], text), drop)


def _reply_chat(body: dict[str, Any], text: str, drop: bool) -> Response:
    if body.get("stream") is True:
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return _stream(chat_sse(body["model"], text, include_usage), SSE_MEDIA_TYPE, drop)
    return _json_or_drop(chat_payload(body["model"], text), drop)


def _reply_embeddings(body: dict[str, Any], text: str, drop: bool) -> Response:
    return _json_or_drop(embeddings_payload(body), drop)


@dataclass(frozen=True)
class Plan:
    """What one request gets, decided on arrival: a delay, then an error, a drop or an answer."""

    sleep_ms: float
    status: int | None
    drop: bool
    retry_after: str | None = None
    message: str = ""
    trickle_ms: float = 0.0


def plan_for(state: Any, controls: Controls) -> Plan:
    """Apply ``fail_times`` (counted per key on arrival), the controls and ``fail_rate``."""
    if controls.fail_times is not None:
        key = controls.key or "default"
        seen = state.fail_counts.get(key, 0) + 1
        state.fail_counts[key] = seen
        if seen > controls.fail_times:
            return Plan(sleep_ms=0.0, status=None, drop=False)
        defaulted = 500 if not (controls.sleep_ms or controls.trickle_ms or controls.drop) else None
        return Plan(
            sleep_ms=controls.sleep_ms,
            status=None if controls.drop else controls.status or defaulted,
            drop=controls.drop,
            retry_after=controls.retry_after,
            message=f"mock failure {seen}/{controls.fail_times} for key {key!r}",
            trickle_ms=controls.trickle_ms,
        )
    if controls.status is not None:
        status = controls.status
        return Plan(controls.sleep_ms, status, False, controls.retry_after, f"mock status {status}")
    if state.config.fail_rate > 0 and state.rng.random() < state.config.fail_rate:
        message = "The server had an error while processing your request. Sorry about that!"
        return Plan(controls.sleep_ms, 500, False, None, message)
    return Plan(
        sleep_ms=controls.sleep_ms,
        status=None,
        drop=controls.drop,
        trickle_ms=controls.trickle_ms,
    )


TextFn = Callable[[dict[str, Any]], str]
ReplyFn = Callable[[dict[str, Any], str, bool], Response]


async def _serve(request: Request, text_of: TextFn, reply: ReplyFn) -> Response:
    """Count, parse, plan, record, delay, then fail or answer."""
    state = request.app.state
    path = request.url.path
    state.counts[path] = state.counts.get(path, 0) + 1
    try:
        body = await _read_json(request)
        text = text_of(body)
        controls = parse_controls(request.headers.get(BEHAVIOR_HEADER), text)
    except BadRequestError as exc:
        await asyncio.sleep(state.config.latency_ms / 1000)
        return _error_response(400, exc.message, exc.param)
    plan = plan_for(state, controls)
    if controls.key is not None:
        state.attempts.setdefault(controls.key, []).append(
            {
                "at": time.time(),
                "path": path,
                "status": plan.status or 200,
                "drop": plan.drop,
                "sleep_ms": plan.sleep_ms,
                "trickle_ms": plan.trickle_ms,
            }
        )
    model = str(body.get("model"))
    state.inflight[model] = state.inflight.get(model, 0) + 1
    state.peaks[model] = max(state.peaks.get(model, 0), state.inflight[model])
    try:
        await asyncio.sleep((state.config.latency_ms + plan.sleep_ms) / 1000)
    finally:
        state.inflight[model] -= 1
    if plan.status is not None:
        return _error_response(plan.status, plan.message, retry_after=plan.retry_after)
    response = reply(body, text, plan.drop)
    if plan.trickle_ms:
        response = _trickled(response, plan.trickle_ms / 1000)
    if controls.hold and isinstance(response, StreamingResponse):
        response.body_iterator = _held(response.body_iterator, state.holds, controls.hold)
    return response


TRICKLE_PARTS = 8


def _trickled(response: Response, gap_s: float) -> StreamingResponse:
    """The same answer, its body sent in ``TRICKLE_PARTS`` parts ``gap_s`` apart."""

    async def parts(frames: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        body = b"".join([bytes(frame) async for frame in frames])
        size = -(-len(body) // TRICKLE_PARTS)
        for start in range(0, len(body), size):
            if start:
                await asyncio.sleep(gap_s)
            yield body[start : start + size]

    if isinstance(response, StreamingResponse):
        frames = response.body_iterator
    else:
        frames = _iterate([response.body])
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return StreamingResponse(parts(frames), status_code=response.status_code, headers=headers)


async def _held(
    frames: AsyncIterator[Any], holds: dict[str, asyncio.Event], name: str
) -> AsyncIterator[Any]:
    """Send the first frame, then wait for ``POST /_mock/release/{name}`` (``hold=NAME``)."""
    event = holds.setdefault(name, asyncio.Event())
    first = True
    async for frame in frames:
        yield frame
        if first:
            first = False
            await event.wait()


async def _release(request: Request) -> Response:
    request.app.state.holds.setdefault(request.path_params["name"], asyncio.Event()).set()
    return JSONResponse({"ok": True})


async def _responses(request: Request) -> Response:
    return await _serve(request, responses_text, _reply_responses)


async def _chat(request: Request) -> Response:
    return await _serve(request, chat_text, _reply_chat)


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


async def _reset(request: Request) -> Response:
    request.app.state.peaks.clear()
    request.app.state.counts.clear()
    request.app.state.fail_counts.clear()
    request.app.state.attempts.clear()
    return JSONResponse({"ok": True})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error_response(status, f"{detail}: {request.method} {request.url.path}")


def create_mock_app(
    *, latency_ms: float = 0.0, fail_rate: float = 0.0, seed: int | None = None
) -> Starlette:
    """Build the mock provider app.

    ``latency_ms`` delays every API answer; ``fail_rate`` is the probability of a 500;
    ``seed`` seeds the RNG used for ``fail_rate``.
    """
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
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.config = MockConfig(latency_ms=latency_ms, fail_rate=fail_rate)
    app.state.rng = random.Random(seed)
    app.state.counts = {}
    app.state.fail_counts = {}
    app.state.attempts = {}
    app.state.inflight = {}
    app.state.peaks = {}
    app.state.holds = {}
    return app


class _HideDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every deliberate ``drop=1``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], MockDropError))


def run(host: str, port: int, latency_ms: float, fail_rate: float) -> None:
    """Serve the mock provider with uvicorn (log level "warning") until interrupted."""
    app = create_mock_app(latency_ms=latency_ms, fail_rate=fail_rate)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    logging.getLogger("uvicorn.error").addFilter(_HideDrops())
    uvicorn.Server(config).run()
