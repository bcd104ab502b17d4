"""The events of a streamed background Response, as stored and as sent.

A stream begins with ``response.created`` and ``response.queued`` (stored by the gateway
with the request), goes on with what the workers store as their attempts run, and ends with
one terminal event. A final row whose terminal event was not stored (cancelled, expired
before any attempt, a processing failure) gets it from the row, numbered after the last
stored event: once a row is final no event is stored any more, so every reader builds the
same one.
"""

from __future__ import annotations

import json
from typing import Any

TERMINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.cancelled",
}
TERMINAL_TYPES = frozenset(TERMINAL.values())


def dumps(event: Any) -> str:
    """Compact JSON, as events are stored and sent."""
    return json.dumps(event, separators=(",", ":"))


def frame(kind: str, data: str) -> bytes:
    """One server-sent event."""
    return f"event: {kind}\ndata: {data}\n\n".encode()


def opening_events(queued: dict[str, Any]) -> list[dict[str, Any]]:
    """Events 0 and 1 of a stream, from the queued Response."""
    return [
        {"type": "response.created", "response": queued, "sequence_number": 0},
        {"type": "response.queued", "response": queued, "sequence_number": 1},
    ]


def terminal_event(response: dict[str, Any], sequence_number: int) -> dict[str, Any]:
    """The event that ends a stream of a final Response (``response.cancelled`` for a
    cancelled one: the SDK has no type for it; its ``response`` is a plain Response)."""
    kind = TERMINAL.get(response.get("status") or "", "response.failed")
    return {"type": kind, "response": response, "sequence_number": sequence_number}
