"""What a cache entry is keyed by: a canonical form of the fields that decide the answer.

Two hashes per request. ``context`` covers everything that decides the answer except the
prompt (model, instructions, tools, tool_choice, response or text format, and the sampling
fields unless the model's ``cache.ignore`` lists them); ``exact`` adds the prompt (``input``
or ``messages``). Field order and whitespace do not matter (the body is parsed and dumped
with sorted keys); anything else does. A semantic match needs the same ``context``, so a
different tool list or format can never be served, and its prompt text is verified.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from app.settings import NOT_DECIDING
from app.vocabulary import Endpoint

PROMPT_FIELD: dict[str, str] = {Endpoint.CHAT: "messages", Endpoint.RESPONSES: "input"}


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A request's cache identity."""

    exact: bytes  # sha256 of the canonical request
    context: bytes  # sha256 of the canonical request without its prompt
    prompt: str | None  # the prompt as text, for semantic matching (None: not plain text)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_key(endpoint: str, body: dict[str, Any], ignore: frozenset[str]) -> RequestKey:
    """The cache identity of a validated request body."""
    field = PROMPT_FIELD.get(endpoint, "input")
    rest = {k: v for k, v in body.items() if k != field and k not in NOT_DECIDING}
    for name in ignore:
        rest.pop(name, None)
    context = hashlib.sha256(_dumps([endpoint, rest])).digest()
    exact = hashlib.sha256(context + _dumps(body.get(field))).digest()
    prompt = prompt_text(endpoint, body) if endpoint in PROMPT_FIELD else None
    return RequestKey(exact=exact, context=context, prompt=prompt)


def prompt_text(endpoint: str, body: dict[str, Any]) -> str | None:
    """The prompt as lines of ``role: text`` (None when a part is not text: an image, a
    file, audio; such prompts are cached exactly only)."""
    if endpoint == Endpoint.CHAT:
        items = body.get("messages")
    else:
        items = body.get("input")
        if isinstance(items, str):
            return f"user: {items}"
    if not isinstance(items, list):
        return None
    lines: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        kind = item.get("type", "message")
        if kind != "message":  # tool calls and their outputs: their exact JSON
            lines.append(f"{kind}: {_dumps(item).decode()}")
            continue
        text = _content_text(item.get("content"))
        if text is None:
            return None
        if item.get("tool_calls"):
            text += " " + _dumps(item["tool_calls"]).decode()
        lines.append(f"{item.get('role', 'user')}: {text}")
    return "\n".join(lines)


TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def _content_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        return None
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
            return None
        texts.append(str(part.get("text", "")))
    return " ".join(texts)


def storable(endpoint: str, request: dict[str, Any], response: Any) -> bool:
    """Whether a completed answer may be cached: not a sample among several (``n > 1`` at a
    temperature above 0, OpenAI's default being 1), not truncated or filtered."""
    if not isinstance(response, dict):
        return False
    n = request.get("n")
    temperature = request.get("temperature", 1)
    if isinstance(n, int) and n > 1 and (temperature is None or temperature > 0):
        return False
    if endpoint == Endpoint.CHAT:
        choices = response.get("choices")
        return (
            isinstance(choices, list)
            and bool(choices)
            and all(
                isinstance(c, dict) and c.get("finish_reason") in ("stop", "tool_calls")
                for c in choices
            )
        )
    if endpoint == Endpoint.RESPONSES:
        return response.get("status") == "completed"
    return True
