"""What the mock provider answers: deterministic echo payloads of the Responses, chat
completions and embeddings APIs, their SSE frames, and OpenAI-format error bodies."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import html
import json
import math
import re
import secrets
import struct
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeGuard

from app.mock.controls import BadRequestError

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


def dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-format error body for ``status``."""
    default_kind = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    err_type, code = _ERROR_KINDS.get(status, default_kind)
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_payload(status: int, message: str, error_format: str = "openai") -> tuple[bytes, str]:
    """An error answer's bytes and media type: OpenAI's body, or as other servers answer
    (``detail``: llama-cpp-python's FastAPI ``{"detail": ...}``; ``text``; ``html``: a
    proxy's error page)."""
    if error_format == "detail":
        return dumps({"detail": message}).encode(), "application/json"
    if error_format == "text":
        return message.encode(), "text/plain; charset=utf-8"
    if error_format == "html":
        title = f"{status} {_phrase(status)}".strip()
        page = (
            f"<html><head><title>{title}</title><style>body {{ margin: 0 }}</style></head>"
            f"<body><h1>{title}</h1><p>{html.escape(message)}</p></body></html>"
        )
        return page.encode(), "text/html; charset=utf-8"
    return dumps(error_body(status, message)).encode(), "application/json"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


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


# One embedding input: a text, or a token array (``[1, 2, 3]``, as LangChain's default
# embeddings client sends its texts, tokenized).
EmbeddingInput = str | list[int]
INPUT_FORMS = (
    "'input' must be a string, a token array, or a non-empty list of strings or of token "
    "arrays (non-empty lists of non-negative integers)."
)


def _is_tokens(value: Any) -> TypeGuard[list[int]]:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _embedding_inputs(body: dict[str, Any]) -> list[EmbeddingInput]:
    value = body.get("input")
    if isinstance(value, str) or _is_tokens(value):
        return [value]
    if not isinstance(value, list) or not value:
        raise BadRequestError(INPUT_FORMS, "input")
    inputs: list[EmbeddingInput] = []
    for item in value:
        if not (isinstance(item, str) or _is_tokens(item)):
            raise BadRequestError(INPUT_FORMS, "input")
        inputs.append(item)
    if len({isinstance(item, str) for item in inputs}) > 1:  # texts and token arrays mixed
        raise BadRequestError(INPUT_FORMS, "input")
    return inputs


def _input_text(value: EmbeddingInput) -> str:
    """What an input's vector is derived from (a token array's ids, spelled out)."""
    return value if isinstance(value, str) else "tokens:" + ",".join(map(str, value))


def _input_tokens(value: EmbeddingInput) -> int:
    return _word_count(value) if isinstance(value, str) else len(value)


def embeddings_text(body: dict[str, Any]) -> str:
    """Validate an embeddings request and return its first input text (controls are read
    from it; a token array has none)."""
    _require_model(body)
    _embedding_options(body)
    first = _embedding_inputs(body)[0]
    return first if isinstance(first, str) else ""


def shape_usage(obj: Any, report: bool, cached: int, reasoning: int) -> None:
    """Make ``obj`` (a Response, ChatCompletion or chunk) report no usage, or ``cached``
    input and ``reasoning`` output tokens (capped at the totals). In place."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return
    if not report:
        if "prompt_tokens" in usage:
            del obj["usage"]
        else:
            obj["usage"] = None
        return
    given = int(usage.get("input_tokens", usage.get("prompt_tokens")) or 0)
    produced = int(usage.get("output_tokens", usage.get("completion_tokens")) or 0)
    for name, field, value in (
        ("input_tokens_details", "cached_tokens", min(cached, given)),
        ("prompt_tokens_details", "cached_tokens", min(cached, given)),
        ("output_tokens_details", "reasoning_tokens", min(reasoning, produced)),
        ("completion_tokens_details", "reasoning_tokens", min(reasoning, produced)),
    ):
        if isinstance(usage.get(name), dict):
            usage[name] = {**usage[name], field: value}


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
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
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


def responses_sse(
    model: str, in_text: str, shape: Callable[[Any], None] | None = None
) -> list[bytes]:
    """SSE frames for a streamed Response, numbered from 0 (``shape`` edits the usage)."""
    frames = []
    for seq, event in enumerate(responses_events(model, in_text)):
        event = {**event, "sequence_number": seq}
        if shape is not None and isinstance(event.get("response"), dict):
            event["response"] = copy.deepcopy(event["response"])
            shape(event["response"])
        frames.append(f"event: {event['type']}\ndata: {dumps(event)}\n\n".encode())
    return frames


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
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply,
        "refusal": None,
        "annotations": [],
    }
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


def chat_sse(
    model: str, in_text: str, include_usage: bool, shape: Callable[[Any], None] | None = None
) -> list[bytes]:
    """SSE frames for a streamed chat answer, ending with ``[DONE]``."""
    chunks = chat_chunks(model, in_text, include_usage)
    if shape is not None:
        for chunk in chunks:
            shape(chunk)
    frames = [f"data: {dumps(c)}\n\n".encode() for c in chunks]
    return [*frames, b"data: [DONE]\n\n"]


_EMBED_WORD = re.compile(r"[a-z0-9]+")
_TRIGRAM_WEIGHT = 0.25


@functools.lru_cache(maxsize=65536)
def _feature_hash(feature: str) -> int:
    """A stable 64-bit hash of one feature (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")


def _embedding_features(text: str) -> list[tuple[str, float]]:
    """Lower-cased words (a plural ``s`` dropped) with weight 1, and each word's character
    trigrams (``#`` marking its ends) with a smaller weight: typos keep most of them."""
    features: list[tuple[str, float]] = []
    for word in _EMBED_WORD.findall(text.lower()):
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        features.append(("w:" + word, 1.0))
        padded = f"#{word}#"
        features.extend(("t:" + padded[i : i + 3], _TRIGRAM_WEIGHT) for i in range(len(word)))
    return features


def embedding_vector(text: str, dim: int) -> list[float]:
    """A deterministic unit vector (float32-exact values) for ``text``: a feature-hashed bag
    of its words and their character trigrams (signed hashing into ``dim`` buckets), so texts
    sharing most words are close in cosine similarity. A text without words gets a vector
    derived from a hash of the whole text."""
    raw = [0.0] * dim
    for feature, weight in _embedding_features(text):
        h = _feature_hash(feature)
        raw[h % dim] += weight if h >> 63 else -weight
    norm = math.sqrt(sum(x * x for x in raw))
    if norm == 0.0:
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
    inputs = _embedding_inputs(body)
    dim, encoding = _embedding_options(body)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encode_vector(embedding_vector(_input_text(v), dim), encoding),
        }
        for i, v in enumerate(inputs)
    ]
    tokens = sum(_input_tokens(v) for v in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": body["model"], "usage": usage}


# --- chat-only mode (``--api chat`` / ``--api legacy``): tool calls, token limits, formats ---

LEGACY_REFUSED = "max_completion_tokens"


def _last_message(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages") or [{}]
    last = messages[-1]
    return last if isinstance(last, dict) else {}


def _tool_to_call(body: dict[str, Any]) -> str | None:
    """The function the answer calls: with tools, unless the last message is a tool's result
    (then the answer is text) or ``tool_choice`` is ``none``."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not tools or choice == "none" or _last_message(body).get("role") == "tool":
        return None
    if isinstance(choice, dict):
        return str((choice.get("function") or {}).get("name"))
    return str((tools[0].get("function") or {}).get("name"))


def chat_answer(body: dict[str, Any], in_text: str, legacy: bool) -> tuple[Any, str | None, str]:
    """What a chat-only server answers: (text, or None for a tool call; the function called;
    finish_reason). The reply is ``echo: <text>``, ``tool said: <result>`` after a tool
    message, or ``{"echo": <text>}`` when a JSON ``response_format`` is asked for; cut to
    ``max_tokens`` words (also ``max_completion_tokens`` unless ``legacy``)."""
    if legacy and LEGACY_REFUSED in body:
        raise BadRequestError(
            f"Unrecognized request argument supplied: {LEGACY_REFUSED}", LEGACY_REFUSED
        )
    function = _tool_to_call(body)
    if function is not None:
        return None, function, "tool_calls"
    last = _last_message(body)
    if last.get("role") == "tool":
        reply = "tool said: " + _content_text(last.get("content"), frozenset({"text"}))
    elif (body.get("response_format") or {}).get("type") in ("json_schema", "json_object"):
        reply = dumps({"echo": in_text})
    else:
        reply = "echo: " + in_text
    limit = body.get("max_tokens")
    if limit is None and not legacy:
        limit = body.get("max_completion_tokens")
    words = _split_words(reply)
    if isinstance(limit, int) and 0 < limit < len(words):
        return "".join(words[:limit]), None, "length"
    return reply, None, "stop"


def _call(function: str, in_text: str) -> dict[str, Any]:
    return {
        "id": f"call_{_hex(8)}",
        "type": "function",
        "function": {"name": function, "arguments": dumps({"text": in_text})},
    }


def chat_only_payload(body: dict[str, Any], in_text: str, legacy: bool) -> dict[str, Any]:
    """A ChatCompletion as a chat-only server answers it (see :func:`chat_answer`)."""
    reply, function, finish = chat_answer(body, in_text, legacy)
    payload = chat_payload(body["model"], in_text)
    message = payload["choices"][0]["message"]
    message["content"] = reply
    if function is not None:
        message["tool_calls"] = [_call(function, in_text)]
    payload["choices"][0]["finish_reason"] = finish
    payload["usage"] = _chat_usage(_word_count(in_text), _word_count(reply or in_text))
    return payload


def chat_only_sse(body: dict[str, Any], in_text: str, legacy: bool) -> list[bytes]:
    """SSE frames of a streamed chat-only answer; the usage chunk only when
    ``stream_options.include_usage`` is set."""
    reply, function, finish = chat_answer(body, in_text, legacy)
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = {
        "id": f"chatcmpl-mock{_hex()}",
        "object": "chat.completion.chunk",
        "created": _now(),
        "model": body["model"],
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**head, "choices": [choice]}

    chunks = [chunk({"role": "assistant", "content": "" if function is None else None})]
    if function is None:
        chunks += [chunk({"content": word}) for word in _split_words(reply)]
    else:
        call = _call(function, in_text)
        arguments = call["function"]["arguments"]
        opening = {**call, "index": 0, "function": {"name": function, "arguments": ""}}
        chunks.append(chunk({"tool_calls": [opening]}))
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    chunks.append(chunk({}, finish))
    if include_usage:
        usage = _chat_usage(_word_count(in_text), _word_count(reply or in_text))
        chunks.append({**head, "choices": [], "usage": usage})
    frames = [f"data: {dumps(c)}\n\n".encode() for c in chunks]
    return [*frames, b"data: [DONE]\n\n"]
