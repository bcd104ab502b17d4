"""Token usage from OpenAI-shaped bodies and server-sent event streams."""

from __future__ import annotations

import json
from typing import Any

Usage = tuple[int | None, int | None, int | None]
NO_USAGE: Usage = (None, None, None)


def usage_of(body: Any) -> Usage:
    """(input, output, total) tokens of a Response, ChatCompletion or embeddings body."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return NO_USAGE
    given = usage.get("input_tokens", usage.get("prompt_tokens"))
    produced = usage.get("output_tokens", usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    if total is None and given is not None:
        total = given + (produced or 0)
    return given, produced, total


class StreamUsage:
    """Watches relayed SSE bytes for the event that carries usage.

    Responses streams put it in ``response.completed``; chat streams in the last chunk when
    ``stream_options.include_usage`` is set. Only lines mentioning ``"usage"`` are parsed.
    """

    def __init__(self) -> None:
        self._tail = b""
        self.usage: Usage = NO_USAGE
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"data:") and (b'"usage"' in line or b'"error"' in line):
                self._inspect(line[5:].strip())

    def _inspect(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") in ("response.failed", "error"):
            self.failed = True
        found = usage_of(event.get("response", event))
        if found != NO_USAGE:
            self.usage = found
