"""Token usage from OpenAI-shaped bodies and server-sent event streams.

Both spellings are read: the Responses API's ``input_tokens`` / ``output_tokens`` with
``input_tokens_details.cached_tokens`` and ``output_tokens_details.reasoning_tokens``, and the
chat and embeddings APIs' ``prompt_tokens`` / ``completion_tokens`` with
``prompt_tokens_details`` and ``completion_tokens_details``.

When an upstream reports no usage (llama.cpp's server ignores
``stream_options.include_usage``), :func:`estimate_usage` counts about one token per four
characters of text (OpenAI's own rule of thumb for English; no tokenizer works offline for
every model) and the row is marked ``usage_estimated``.
"""

from __future__ import annotations

import math
from typing import Any

from app.token_usage import NO_USAGE, TokenUsage


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _field(details: Any, name: str) -> int | None:
    return _int(details.get(name)) if isinstance(details, dict) else None


def usage_of(body: Any) -> TokenUsage:
    """The usage a Response, ChatCompletion, embeddings body or Batch reports (NO_USAGE if none)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return NO_USAGE
    if "input_tokens" in usage or "output_tokens" in usage:  # the Responses API's names
        given, produced = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        cached = _field(usage.get("input_tokens_details"), "cached_tokens")
        reasoning = _field(usage.get("output_tokens_details"), "reasoning_tokens")
    else:  # chat completions and embeddings
        given, produced = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        cached = _field(usage.get("prompt_tokens_details"), "cached_tokens")
        reasoning = _field(usage.get("completion_tokens_details"), "reasoning_tokens")
    total = _int(usage.get("total_tokens"))
    if total is None:
        if given is None and produced is None:
            return NO_USAGE
        total = (given or 0) + (produced or 0)
    return TokenUsage(given, produced, total, cached, reasoning)


# Keys whose string values are names, not text the model read or wrote.
_NOT_TEXT = frozenset(
    {"role", "type", "id", "status", "model", "object", "finish_reason", "call_id", "name"}
)
CHARS_PER_TOKEN = 4


def _chars(value: Any) -> tuple[int, int]:
    """(characters of text, tokens given as integer ids) found in ``value``."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, int) and not isinstance(value, bool):
        return 0, 1  # embeddings input given as token ids
    chars = ids = 0
    if isinstance(value, list):
        for item in value:
            c, i = _chars(item)
            chars, ids = chars + c, ids + i
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_TEXT:
                c, i = _chars(item)
                chars, ids = chars + c, ids + i
    return chars, ids


def _tokens(*values: Any) -> int:
    chars = ids = 0
    for value in values:
        c, i = _chars(value)
        chars, ids = chars + c, ids + i
    return math.ceil(chars / CHARS_PER_TOKEN) + ids


def estimate_usage(request: Any, response: Any) -> TokenUsage:
    """About ceil(characters / 4) tokens of the request's text and of the answer's text."""
    request = request if isinstance(request, dict) else {}
    response = response if isinstance(response, dict) else {}
    given = _tokens(request.get("instructions"), request.get("input"), request.get("messages"))
    produced = _tokens(response.get("output"), response.get("choices"))
    return TokenUsage(
        input=given, output=produced, total=given + produced, cached=0, estimated=True
    )


def measured(request: Any, response: Any) -> TokenUsage:
    """The usage the answer reports, else tiergate's estimate."""
    found = usage_of(response)
    return found if found.known else estimate_usage(request, response)
