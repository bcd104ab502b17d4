"""Chat completion streams as Responses stream events (:class:`StreamTranslator`), for
chat-only upstreams; with the frames both ways: :func:`chat_events` reads chat's SSE,
:func:`sse` writes the events'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.ids import new_id
from app.openai.chat_answer import (
    arguments_json,
    call_item,
    ending,
    message_item,
    reasoning_item,
    refusal_part,
    response_object,
    text_part,
    tool_calls,
    usage_from_chat,
)


@dataclass
class _Open:
    """An output item being streamed."""

    index: int
    item: dict[str, Any]
    # The text so far of a call's arguments, a reasoning item, or a message's current part,
    # in pieces (joined once: += on a string held elsewhere copies it every token).
    pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def settle_part(self) -> None:
        """Write the current part's text into the message item's last part."""
        parts = self.item["content"]
        if parts:
            parts[-1]["text" if parts[-1]["type"] == "output_text" else "refusal"] = self.text
        self.pieces = []


class StreamTranslator:
    """Chat completion chunks in, Responses stream events out (``sequence_number`` set).

    ``start()`` first, ``feed(chunk)`` for each parsed chunk, ``finish()`` at ``[DONE]`` or
    the end of the body. Items are closed in order: text, then each tool call.
    """

    def __init__(self, request: dict[str, Any], *, response_id: str | None = None) -> None:
        self.request = request
        self.id = response_id or new_id("resp_")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # items done
        self.usage: dict[str, Any] | None = None
        self.finish_reason: Any = None
        self.finished = False
        self._message: _Open | None = None
        self._reasoning: _Open | None = None
        self._calls: dict[int, _Open] = {}  # by the chunk's tool call index
        self._next_index = 0

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return event

    def _snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(
            self.request,
            list(self.output),
            response_id=self.id,
            created_at=self.created_at,
            status=status,
            incomplete=extra.get("incomplete"),
            usage=extra.get("usage"),
        )

    def start(self) -> list[dict[str, Any]]:
        snapshot = self._snapshot("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_chat(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thought, str) and thought:
                events += self._reasoning_delta(thought)
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text_delta(delta["content"])
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                events += self._refusal_delta(delta["refusal"])
            for call in tool_calls(delta.get("tool_calls")):
                events += self._call_delta(call)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return events

    def _add(self, item: dict[str, Any]) -> tuple[_Open, dict[str, Any]]:
        opened = _Open(self._next_index, item)
        self._next_index += 1
        return opened, self._event(
            "response.output_item.added", output_index=opened.index, item=dict(item)
        )

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self._reasoning is None:
            item = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
            self._reasoning, added = self._add(item)
            events.append(added)
        self._reasoning.pieces.append(text)
        loc = {"item_id": self._reasoning.item["id"], "output_index": self._reasoning.index}
        events.append(
            self._event("response.reasoning_text.delta", **loc, content_index=0, delta=text)
        )
        return events

    def _open_message(self) -> tuple[_Open, list[dict[str, Any]]]:
        events = self._close_reasoning()
        if self._message is None:
            item = message_item(new_id("msg_"), [], "in_progress")
            self._message, added = self._add(item)
            events.append(added)
        return self._message, events

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        message = self._message
        parts = message.item["content"] if message is not None else None
        if message is not None and parts and parts[-1]["type"] == "output_text":
            # The usual case, once per token: the text part is open already.
            message.pieces.append(text)
            event = {
                "type": "response.output_text.delta",
                "item_id": message.item["id"],
                "output_index": message.index,
                "content_index": len(parts) - 1,
                "delta": text,
                "logprobs": [],
                "sequence_number": self.sequence,
            }
            self.sequence += 1
            return [event]
        loc, events = self._part_delta(text, text_part)
        events.append(self._event("response.output_text.delta", **loc, delta=text, logprobs=[]))
        return events

    def _refusal_delta(self, text: str) -> list[dict[str, Any]]:
        loc, events = self._part_delta(text, refusal_part)
        events.append(self._event("response.refusal.delta", **loc, delta=text))
        return events

    def _part_delta(
        self, text: str, new_part: Callable[[str], dict[str, Any]]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Append ``text`` to the message's last part, first opening one of ``new_part``'s
        type if the last is not; the part's location (for the delta event), the events so far."""
        message, events = self._open_message()
        loc = {"item_id": message.item["id"], "output_index": message.index}
        parts = message.item["content"]
        fresh = new_part("")
        if not parts or parts[-1]["type"] != fresh["type"]:
            message.settle_part()
            parts.append(fresh)
            events.append(
                self._event(
                    "response.content_part.added",
                    **loc,
                    content_index=len(parts) - 1,
                    part=new_part(""),
                )
            )
        message.pieces.append(text)
        return {**loc, "content_index": len(parts) - 1}, events

    def _call_delta(self, call: Any) -> list[dict[str, Any]]:
        if not isinstance(call, dict):
            return []
        events = self._close_reasoning() + self._close_message()
        index = call.get("index", 0)
        function = call.get("function") or {}
        opened = self._calls.get(index)
        if opened is None:
            item = call_item(
                new_id("fc_"),
                call.get("id") or new_id("call_"),
                function.get("name") or "",
                "",
                "in_progress",
            )
            opened, added = self._add(item)
            self._calls[index] = opened
            events.append(added)
        elif function.get("name") and not opened.item["name"]:
            opened.item["name"] = function["name"]
        arguments = arguments_json(function.get("arguments"))
        if arguments:
            opened.pieces.append(arguments)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=opened.item["id"],
                    output_index=opened.index,
                    delta=arguments,
                )
            )
        return events

    def _close_reasoning(self) -> list[dict[str, Any]]:
        opened, self._reasoning = self._reasoning, None
        if opened is None:
            return []
        loc = {"item_id": opened.item["id"], "output_index": opened.index}
        item = reasoning_item(opened.item["id"], opened.text)
        self.output.append(item)
        return [
            self._event("response.reasoning_text.done", **loc, content_index=0, text=opened.text),
            self._event("response.output_item.done", output_index=opened.index, item=item),
        ]

    def _close_message(self) -> list[dict[str, Any]]:
        opened, self._message = self._message, None
        if opened is None:
            return []
        opened.settle_part()
        loc = {"item_id": opened.item["id"], "output_index": opened.index}
        events = []
        for i, part in enumerate(opened.item["content"]):
            if part["type"] == "output_text":
                events.append(
                    self._event(
                        "response.output_text.done",
                        **loc,
                        content_index=i,
                        text=part["text"],
                        logprobs=[],
                    )
                )
            else:
                events.append(
                    self._event(
                        "response.refusal.done", **loc, content_index=i, refusal=part["refusal"]
                    )
                )
            events.append(
                self._event("response.content_part.done", **loc, content_index=i, part=part)
            )
        item = {**opened.item, "status": "completed"}
        self.output.append(item)
        events.append(
            self._event("response.output_item.done", output_index=opened.index, item=item)
        )
        return events

    def _close_calls(self) -> list[dict[str, Any]]:
        events = []
        for opened in sorted(self._calls.values(), key=lambda o: o.index):
            item = {**opened.item, "arguments": opened.text, "status": "completed"}
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=opened.index,
                    name=item["name"],
                    arguments=opened.text,
                )
            )
            events.append(
                self._event("response.output_item.done", output_index=opened.index, item=item)
            )
            self.output.append(item)
        self._calls.clear()
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close what is open; the final ``response.completed`` (or ``.incomplete``)."""
        if self.finished:
            return []
        self.finished = True
        events = self._close_reasoning() + self._close_message() + self._close_calls()
        status, incomplete = ending(self.finish_reason)
        final = self._snapshot(status, incomplete=incomplete, usage=self.usage)
        events.append(self._event(f"response.{status}", response=final))
        return events

    def fail(self, message: str) -> list[dict[str, Any]]:
        """The upstream reported an error mid-stream: ``response.failed``."""
        if self.finished:
            return []
        self.finished = True
        final = self._snapshot("failed", usage=self.usage)
        final["error"] = {"code": "server_error", "message": message}
        return [self._event("response.failed", response=final)]


# One encoder for every event (json.dumps with separators builds a new one per call).
_encode = json.JSONEncoder(separators=(",", ":")).encode


def sse(events: list[dict[str, Any]]) -> bytes:
    """Responses stream events as server-sent event frames."""
    return "".join(
        f"event: {event['type']}\ndata: {_encode(event)}\n\n" for event in events
    ).encode()


def chat_events(data: bytes) -> Iterator[dict[str, Any] | None]:
    """The chunks in complete SSE ``data:`` lines of ``data`` (``None`` for ``[DONE]``);
    lines that are not JSON objects are skipped."""
    for line in data.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            yield None
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        if isinstance(chunk, dict):
            yield chunk
