"""A finished request replayed as a server-sent event stream (streaming on the flex tier).

The worker that ran the call and the gateway that holds the client are different processes,
and the stored row is the durable truth, so a blocking flex stream is replayed from the row
once it is final rather than relayed live: the events are built from the stored Response or
ChatCompletion, as OpenAI would have streamed them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from app.openai.objects import RequestView, response_object, row_error, stored_result
from app.vocabulary import Endpoint, ErrorCode, Status

KEEP_ALIVE = b": keep-alive\n\n"


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def response_events(response: dict[str, Any]) -> Iterator[bytes]:
    """The Responses stream of a finished Response: ``response.created``, ``in_progress``,
    each output item with its parts and text, then ``response.completed`` (or ``failed``,
    ``incomplete``), numbered by ``sequence_number`` from 0."""
    seq = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        out = _sse({"type": kind, **fields, "sequence_number": seq})
        seq += 1
        return out

    start = copy.deepcopy(response)
    start.update(status="in_progress", output=[], usage=None, error=None, completed_at=None)
    yield event("response.created", response=start)
    yield event("response.in_progress", response=start)
    for index, item in enumerate(response.get("output") or []):
        if item.get("type") != "message":
            yield event("response.output_item.added", output_index=index, item=item)
            yield event("response.output_item.done", output_index=index, item=item)
            continue
        opened = {**item, "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=index, item=opened)
        for part_index, part in enumerate(item.get("content") or []):
            where = {"item_id": item.get("id"), "output_index": index, "content_index": part_index}
            if part.get("type") != "output_text":
                yield event("response.content_part.added", **where, part=part)
                yield event("response.content_part.done", **where, part=part)
                continue
            empty = {**part, "text": "", "annotations": [], "logprobs": []}
            text = part.get("text") or ""
            logprobs = part.get("logprobs") or []
            yield event("response.content_part.added", **where, part=empty)
            yield event("response.output_text.delta", **where, delta=text, logprobs=logprobs)
            yield event("response.output_text.done", **where, text=text, logprobs=logprobs)
            yield event("response.content_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=index, item=item)
    final = {
        "failed": "response.failed",
        "incomplete": "response.incomplete",
        "cancelled": "response.cancelled",
    }
    yield event(final.get(response.get("status") or "", "response.completed"), response=response)


def chat_chunks(completion: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """The chunks of a finished ChatCompletion, then ``[DONE]``: per choice its role, its
    content, refusal and tool calls, its finish reason; the usage chunk if asked for."""
    head: dict[str, Any] = {
        k: completion[k]
        for k in ("id", "created", "model", "service_tier", "system_fingerprint")
        if k in completion
    }
    head["object"] = "chat.completion.chunk"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {**head, "choices": choices, **extra}
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
        yield chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])
        rest: dict[str, Any] = {}
        for field in ("content", "refusal"):
            if message.get(field):
                rest[field] = message[field]
        if message.get("tool_calls"):
            rest["tool_calls"] = [
                {**call, "index": i} for i, call in enumerate(message["tool_calls"])
            ]
        if rest:
            logprobs = choice.get("logprobs")
            yield chunk(
                [{"index": index, "delta": rest, "logprobs": logprobs, "finish_reason": None}]
            )
        finish = choice.get("finish_reason") or "stop"
        yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}])
    if include_usage:
        yield chunk([], usage=completion.get("usage"))
    yield b"data: [DONE]\n\n"


def chat_error(error: dict[str, Any]) -> bytes:
    """A chat stream's in-band error (the SDK raises it as ``APIError``)."""
    body = {
        "error": {
            "message": error.get("message") or "The request failed.",
            "type": "server_error",
            "param": None,
            "code": error.get("code") or ErrorCode.PROCESSING_FAILED,
        }
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def stream_error(endpoint: str, error: dict[str, Any]) -> bytes:
    """An in-band error of either API, for a stream that cannot give its result."""
    if endpoint == Endpoint.RESPONSES:
        event = {
            "type": "error",
            "code": error.get("code"),
            "message": error.get("message"),
            "param": None,
            "sequence_number": 0,
        }
        return _sse(event)
    return chat_error(error)


def replayed(row: RequestView, *, include_usage: bool) -> Iterator[bytes]:
    """The events of a final request row, as its endpoint streams them."""
    if row.endpoint == Endpoint.RESPONSES:
        response = response_object(row)
        if response["status"] not in ("completed", "incomplete"):
            response["status"] = "failed"
        yield from response_events(response)
    elif row.status == Status.COMPLETED:
        yield from chat_chunks(stored_result(row), include_usage=include_usage)
    else:
        yield chat_error(row_error(row) or {"message": "The request failed."})
