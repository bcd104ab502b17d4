"""Server-sent events relayed from an upstream: whole events, tiergate's id, the final event.

The relay hands each batch of whole events to a :class:`ChatRelay` or :class:`ResponsesRelay`,
which rewrite the upstream's id to tiergate's with a byte splice (no re-encoding of events),
notice the final event, and keep what :mod:`app.openai.assembly` needs to rebuild the object.
Only the first event (to learn the upstream's id) and, for Responses, the final event are
parsed while streaming; chat chunks are parsed once, all together, after the stream.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.openai.assembly import chat_completion_of_stream
from app.openai.errors import error_body
from app.vocabulary import Endpoint, ErrorCode

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
    if endpoint == Endpoint.RESPONSES:
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
    upstream for; it is kept for the record and not sent on. Blocks are kept as they were
    sent and parsed once, after the stream (a few byte searches per block until then).
    """

    def __init__(self, rid: str, *, strip_usage: bool) -> None:
        super().__init__(rid)
        self.strip_usage = strip_usage
        self.blocks: list[bytes] = []
        self._usage_block: bytes | None = None

    def feed(self, block: bytes) -> bytes:
        # Called for every block of a stream: byte searches only, no call it can do without.
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        old = self._old
        if old is None:
            old = self._old = self._learn(block, _chunk_id)
        if old:
            block = block.replace(old, self.rid)
        if b"[DONE]" in block and (b"data: [DONE]" in block or b"data:[DONE]" in block):
            self.done = True
        if b'"error"' in block:
            self._find_error(block)
        if self.strip_usage and b"[]" in block and any(m in block for m in USAGE_ONLY):
            block = self._strip_usage(block)
        self.blocks.append(block)
        return block

    def _strip_usage(self, block: bytes) -> bytes:
        kept = []
        for event in block.split(b"\n\n"):
            data = event_data(event)
            if data is not None and any(m in data for m in USAGE_ONLY):
                self._usage_block = event + b"\n\n"
            elif event:
                kept.append(event + b"\n\n")
        return b"".join(kept)

    def _find_error(self, block: bytes) -> None:
        for event in block.split(b"\n\n"):
            data = event_data(event)
            if data is None or b'"error"' not in data or b'"choices"' in data:
                continue
            try:
                found = json.loads(data).get("error")
            except (ValueError, AttributeError):
                found = None
            self.error = found if isinstance(found, dict) else {"message": "The stream failed."}

    def payloads(self) -> list[bytes]:
        """The JSON text of every chunk relayed (and of a stripped usage chunk)."""
        blocks = [*self.blocks, self._usage_block] if self._usage_block else self.blocks
        whole = b"".join(blocks)
        events = whole.split(b"\n\n")
        # The usual stream: one-line ``data: {...}`` events and ``[DONE]``, nothing else.
        found = [event[6:] for event in events if event.startswith(b"data: {")]
        whole_events = len(events) - events.count(b"")
        if (
            len(found) + whole.count(b"data: [DONE]") == whole_events
            and whole.count(b"\n") == 2 * whole_events
        ):
            return found
        found = []
        for event in events:
            data = event_data(event)
            if data is not None and data != DONE:
                found.append(data)
        return found

    def result(self) -> dict[str, Any] | None:
        return chat_completion_of_stream(self.payloads())


def _chunk_id(chunk: Any) -> Any:
    return chunk["id"]


FINAL_OR_ERROR = re.compile(rb'response\.(?:completed|failed|incomplete)|"type": ?"error"')


class ResponsesRelay(StreamRelay):
    """A Responses stream: ``response.id`` spliced (item ids stay the upstream's);
    ``response.completed``, ``response.failed`` or ``response.incomplete`` is the final event,
    and its ``response`` is the object."""

    def __init__(self, rid: str, previous: str | None = None) -> None:
        super().__init__(rid)
        self.final: dict[str, Any] | None = None
        # The upstream never saw the previous_response_id that tiergate resolved: put it back.
        self._previous = None
        if previous is not None:
            self._previous = b'"previous_response_id":' + json.dumps(previous).encode()

    def feed(self, block: bytes) -> bytes:
        block = self._splice(_lf(block), _response_id)
        if self._previous is not None:
            if b'"previous_response_id"' in block:
                for null in (b'"previous_response_id":null', b'"previous_response_id": null'):
                    block = block.replace(null, self._previous)
            else:  # an upstream that leaves the field out: after the response's id
                block = block.replace(self.rid, self.rid + b"," + self._previous)
        if FINAL_OR_ERROR.search(block):
            for event in block.split(b"\n\n"):
                if FINAL_OR_ERROR.search(event):
                    self._inspect(event)
        return block

    def _inspect(self, event: bytes) -> None:
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


def _response_id(event: Any) -> Any:
    return event["response"]["id"]


def relay_for(
    endpoint: str, rid: str, *, strip_usage: bool, previous: str | None = None
) -> StreamRelay:
    """The relay of one stream of ``endpoint`` (``previous``: its previous_response_id)."""
    if endpoint == Endpoint.RESPONSES:
        return ResponsesRelay(rid, previous)
    return ChatRelay(rid, strip_usage=strip_usage)
