"""The final object of a relayed stream, rebuilt from its events.

Chat chunks become one ``ChatCompletion`` (content, refusal and tool-call deltas merged,
``finish_reason``, logprobs, the usage chunk's usage). A Responses stream needs no assembly:
its final event (``response.completed``, ``failed`` or ``incomplete``) carries the object,
so :mod:`app.openai.sse` keeps that one.
"""

from __future__ import annotations

import json
import re
from typing import Any

HEAD_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
# The chunk that most of a stream is made of (vLLM, SGLang, OpenAI and the mock all send it
# in this form): one choice, a piece of content, nothing else. Its piece is read by a regex.
CONTENT_ONLY = re.compile(
    rb'"choices":\[\{"index":0,"delta":\{"content":("(?:[^"\\]|\\.)*")\},'
    rb'"logprobs":null,"finish_reason":null\}\]'
)
CONTENT_MARK = b'"delta":{"content":'


def chat_completion_of_stream(payloads: list[bytes]) -> dict[str, Any] | None:
    """``chat_completion`` of a stream's chunks (JSON texts), reading the content-only chunks
    with one regex over them all instead of parsing each."""
    others = [p for p in payloads if CONTENT_MARK not in p]
    pieces = CONTENT_ONLY.findall(b"\n".join(payloads))
    if len(others) + len(pieces) != len(payloads):  # a chunk of another form: parse them all
        return chat_completion(payloads)
    assembled = chat_completion(others)
    if assembled is None or len(assembled["choices"]) != 1 or not pieces:
        return chat_completion(payloads) if pieces else assembled
    message = assembled["choices"][0]["message"]
    if message["content"]:  # content outside the content-only chunks: order would be lost
        return chat_completion(payloads)
    message["content"] = "".join(json.loads(b"[" + b",".join(pieces) + b"]"))
    return assembled


def _parse_all(payloads: list[bytes]) -> list[Any]:
    """Every chunk, parsed in one call (a stream has hundreds); one by one if any is bad."""
    try:
        parsed: list[Any] = json.loads(b"[" + b",".join(payloads) + b"]")
        return parsed
    except ValueError:
        chunks = []
        for payload in payloads:
            try:
                chunks.append(json.loads(payload))
            except ValueError:
                continue
        return chunks


class _Choice:
    __slots__ = ("content", "finish", "index", "logprobs", "refusal", "role", "tools")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.content: list[str] | None = None
        self.refusal: list[str] | None = None
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            self.role = delta["role"]
        if (text := delta.get("content")) is not None:
            if self.content is None:
                self.content = []
            self.content.append(text)
        if (refusal := delta.get("refusal")) is not None:
            if self.refusal is None:
                self.refusal = []
            self.refusal.append(refusal)
        for call in delta.get("tool_calls") or ():
            self._tool_delta(call)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        if isinstance(logprobs := choice.get("logprobs"), dict):
            if self.logprobs is None:
                self.logprobs = {"content": [], "refusal": []}
            for part in ("content", "refusal"):
                self.logprobs[part] += logprobs.get(part) or []

    def _tool_delta(self, call: dict[str, Any]) -> None:
        index = call.get("index", len(self.tools))
        tool = self.tools.get(index)
        function = call.get("function") or {}
        if tool is None:
            tool = self.tools[index] = {
                "id": call.get("id"),
                "type": call.get("type") or "function",
                "function": {"name": function.get("name") or "", "arguments": ""},
            }
        else:
            if call.get("id"):
                tool["id"] = call["id"]
            if function.get("name"):
                tool["function"]["name"] += function["name"]
        tool["function"]["arguments"] += function.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": None if self.content is None else "".join(self.content),
            "refusal": None if self.refusal is None else "".join(self.refusal),
            "annotations": [],
        }
        if self.tools:
            message["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        return message

    def object(self) -> dict[str, Any]:
        logprobs = None
        if self.logprobs is not None:
            logprobs = {k: v or None for k, v in self.logprobs.items()}
        return {
            "index": self.index,
            "message": self.message(),
            "finish_reason": self.finish or ("tool_calls" if self.tools else "stop"),
            "logprobs": logprobs,
        }


def chat_completion(payloads: list[bytes]) -> dict[str, Any] | None:
    """The ``ChatCompletion`` that the chunks ``payloads`` (JSON texts) spell out; None if
    there is not one chunk."""
    return chat_completion_of(_parse_all(payloads))


def chat_completion_of(chunks: list[Any]) -> dict[str, Any] | None:
    """The ``ChatCompletion`` that parsed ``chunks`` spell out; None if there is none."""
    head: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    usage = None
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if not head:
            head = {k: chunk[k] for k in HEAD_FIELDS if k in chunk}
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            found = choices.get(index)
            if found is None:
                found = choices[index] = _Choice(index)
            found.add(choice)
    if not head:
        return None
    return {
        **head,
        "object": "chat.completion",
        "choices": [choices[i].object() for i in sorted(choices)],
        "usage": usage,
    }
