"""Responses requests for the tests of the chat-only translation (app/openai/chat_*.py)."""

from __future__ import annotations

from typing import Any

WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def responses_request(**extra: Any) -> dict[str, Any]:
    return {"model": "asked-name", "input": "mock:key=x hi there", **extra}
