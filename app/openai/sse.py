"""Server-sent events relayed from an upstream: whole events, tiergate's id, the final event.

The relay hands each batch of whole events to a :class:`ChatRelay` or :class:`ResponsesRelay`,
which rewrite the upstream's id to tiergate's with a byte splice (no re-encoding of events),
notice the final event, and keep what :mod:`app.openai.assembly` needs to rebuild the object.
Only the first event (to learn the upstream's id) and, for Responses, the final event are
parsed while streaming; chat chunks are parsed once, all together, after the stream.
"""

from __future__ import annotations

import json
from typing import Any

from app.openai.assembly import chat_completion
from app.openai.errors import error_body
from app.vocabulary import ErrorCode

DONE = b"[DONE]"
RESPONSE_FINAL = (b"response.completed", b"response.failed", b"response.incomplete")
# A usage-only chat chunk, as OpenAI and vLLM encode it (compact or with spaces).
USAGE_ONLY = (b'"choices":[]', b'"choices": []')


def events_end(data: bytes) -> int:
    """The index just past the last complete server-sent event in ``data`` (0 if none)."""
    ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := data.rfind(sep)) >= 0]
    return max(ends, default=0)


def events_in(data: bytes, end: int) -> int:
    """How many events end in ``data[:end]`` (each ends with a blank line)."""
    return data.count(b"\n\n", 0, end) + data.count(b"\r\n\r\n", 0, end)


def event_data(event: bytes) -> bytes | None:
    """The ``data`` of one event (its lines joined), or None for a comment or empty event."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the usual one-line chat event
        return event[6:]
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def sse_error(endpoint: str, message: str, events_sent: int) -> bytes:
    """An in-band error as each API sends it: a Responses ``error`` event, or a chat chunk
    holding ``error`` (which the SDK raises as ``APIError``)."""
    code = ErrorCode.UPSTREAM_STREAM_BROKEN
    if endpoint == "/v1/responses":
        event = {
            "type": "error",
            "code": code,
            "message": message,
            "param": None,
            "sequence_number": events_sent,
        }
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
    chunk = error_body(message, type="server_error", code=code)
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _lf(block: bytes) -> bytes:
    return block.replace(b"\r\n", b"\n") if b"\r" in block else block


class StreamRelay:
    """What a relayed stream needs: id splicing, the final event, the assembled object."""

    def __init__(self, rid: str) -> None:
        self.rid = json.dumps(rid).encode()
        self._old: bytes | None = None  # the upstream's id, quoted, once learned
        self.done = False  # the final event has been passed on
        self.error: dict[str, Any] | None = None  # an error the stream reported in-band

    def feed(self, block: bytes) -> bytes:
        """Whole events from the upstream -> the bytes to send on."""
        raise NotImplementedError

    def result(self) -> dict[str, Any] | None:
        """The object the stream built (None when it built none)."""
        raise NotImplementedError

    def _splice(self, block: bytes, id_of: Any) -> bytes:
        if self._old is None:
            self._old = self._learn(block, id_of)
        if self._old:
            return block.replace(self._old, self.rid)
        return block

    @staticmethod
    def _learn(block: bytes, id_of: Any) -> bytes | None:
        for event in block.split(b"\n\n"):
            data = event_data(event)
            if data is None or data == DONE:
                continue
            try:
                old = id_of(json.loads(data))
            except (ValueError, TypeError, KeyError, AttributeError):
                return b""
            return json.dumps(old).encode() if isinstance(old, str) and old else b""
        return None  # no event yet: learn from a later block


class ChatRelay(StreamRelay):
    """A chat completion stream: chunks' ``id`` spliced; ``[DONE]`` is the final event.

    ``strip_usage``: the client did not ask for the usage chunk that tiergate asked the
    upstream for; it is kept for the record and not sent on.
    """

    def __init__(self, rid: str, *, strip_usage: bool) -> None:
        super().__init__(rid)
        self.strip_usage = strip_usage
        self.payloads: list[bytes] = []

    def feed(self, block: bytes) -> bytes:
        block = self._splice(_lf(block), lambda chunk: chunk["id"])
        for event in block.split(b"\n\n"):
            data = event_data(event)
            if data is None:
                continue
            if data == DONE:
                self.done = True
                continue
            if b'"error"' in data and b'"choices"' not in data:  # an in-band error chunk
                self._error_chunk(data)
                continue
            self.payloads.append(data)
            if self.strip_usage and any(m in data for m in USAGE_ONLY):
                block = block.replace(event + b"\n\n", b"", 1)
        return block

    def _error_chunk(self, data: bytes) -> None:
        try:
            found = json.loads(data).get("error")
        except (ValueError, AttributeError):
            found = None
        self.error = found if isinstance(found, dict) else {"message": "The stream failed."}

    def result(self) -> dict[str, Any] | None:
        return chat_completion(self.payloads)


class ResponsesRelay(StreamRelay):
    """A Responses stream: ``response.id`` spliced (item ids stay the upstream's);
    ``response.completed``, ``response.failed`` or ``response.incomplete`` is the final event,
    and its ``response`` is the object."""

    def __init__(self, rid: str) -> None:
        super().__init__(rid)
        self.final: dict[str, Any] | None = None

    def feed(self, block: bytes) -> bytes:
        block = self._splice(_lf(block), lambda event: event["response"]["id"])
        if any(m in block for m in RESPONSE_FINAL) or b'"type":"error"' in block:
            for event in block.split(b"\n\n"):
                self._inspect(event)
        return block

    def _inspect(self, event: bytes) -> None:
        if not any(m in event for m in RESPONSE_FINAL) and b'"type":"error"' not in event:
            return
        data = event_data(event)
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        kind = parsed.get("type")
        if kind == "error":
            self.error = {"code": parsed.get("code"), "message": parsed.get("message")}
        elif isinstance(kind, str) and kind.encode() in RESPONSE_FINAL:
            response = parsed.get("response")
            if isinstance(response, dict):
                self.final = response
                self.done = True
                if kind == "response.failed":
                    self.error = response.get("error") or {"message": "The response failed."}

    def result(self) -> dict[str, Any] | None:
        return self.final


def relay_for(endpoint: str, rid: str, *, strip_usage: bool) -> StreamRelay:
    """The relay of one stream of ``endpoint``."""
    if endpoint == "/v1/responses":
        return ResponsesRelay(rid)
    return ChatRelay(rid, strip_usage=strip_usage)
