"""Responses input items: a request's ``input`` as a list, a conversation's history, and the
items as ``GET /v1/responses/{id}/input_items`` lists them (OpenAI's ``ResponseItem``)."""

from __future__ import annotations

import hashlib
from typing import Any

USER_CONTENT = {"input_text", "input_image", "input_file", "input_audio"}


def as_items(value: Any) -> list[Any]:
    """A Responses ``input`` (a string, a list of items, or absent) as a list of items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return value
    return [value]


def continued(previous_input: Any, previous_output: Any, current_input: Any) -> list[Any]:
    """The input of a Response that continues another: the earlier input, the earlier
    output, then its own input (the earlier ``instructions`` are not carried over)."""
    output = previous_output if isinstance(previous_output, list) else []
    return [*as_items(previous_input), *output, *as_items(current_input)]


def item_id(response_id: str, position: int) -> str:
    """The id of an input item that came without one: derived from the response and the
    item's position, so it is the same on every read and nothing extra reaches the upstream."""
    digest = hashlib.blake2b(f"{response_id}:{position}".encode(), digest_size=16).hexdigest()
    return f"msg_{digest}"


def listed_items(response_id: str, value: Any) -> list[dict[str, Any]]:
    """A Response's input items as OpenAI lists them: each with an id, messages with their
    content as a list of parts."""
    listed = []
    for position, item in enumerate(as_items(value)):
        if not isinstance(item, dict):
            continue
        shown = dict(item)
        shown.setdefault("id", item_id(response_id, position))
        if "role" in shown and shown.get("type", "message") == "message":
            shown["type"] = "message"
            shown["content"] = _parts(shown.get("role"), shown.get("content"))
            shown.setdefault("status", "completed")
        listed.append(shown)
    return listed


def _parts(role: Any, content: Any) -> Any:
    if not isinstance(content, str):
        return content
    if role == "assistant":
        return [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}]
    return [{"type": "input_text", "text": content}]
