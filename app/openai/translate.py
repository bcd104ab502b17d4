"""The Responses API over a chat-only upstream (``api: chat``): pure translations.

Requests go from Responses to chat completions (:func:`chat_request`), answers come back as
Response objects (:func:`response_from_chat`), and chat streams become Responses stream events
(:class:`StreamTranslator`). A Responses feature that chat cannot express raises
:class:`Untranslatable` naming the parameter: such a call is refused, never silently
degraded. Fields Responses does not define are passed through (a server's own extensions,
e.g. vLLM's ``top_k``). See docs/chat-upstreams.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.ids import new_id
from app.vocabulary import RequestErrorCode

# Responses fields that tiergate keeps to itself or that only hint (no effect on the answer).
_KEPT_BY_GATEWAY = frozenset(
    {
        "model", "input", "instructions", "service_tier", "background", "store", "metadata",
        "stream", "stream_options", "prompt_cache_key", "prompt_cache_retention",
        "previous_response_id",  # resolved into the input by tiergate (conversations.py)
    }
)  # fmt: skip
# Responses fields with a chat equivalent of the same name and meaning.
_SAME_NAME = ("temperature", "top_p", "user")
# Responses fields that chat cannot express: refused unless absent or their neutral value.
_REFUSED: dict[str, tuple[Any, ...]] = {
    "include": ((), []),
    "truncation": ("disabled",),
    "prompt": (),
    "conversation": (),
    "max_tool_calls": (),
    "top_logprobs": (0,),
}
# Chat's deprecated function-calling fields, each with what replaced it: refused on every
# path (chat calls in app/openai/validation.py, translated Responses calls here), never sent.
LEGACY_CHAT_FIELDS = {"functions": "tools", "function_call": "tool_choice"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


@dataclass
class Untranslatable(Exception):
    """A Responses request chat cannot express; ``param`` names the field (OpenAI's style)."""

    param: str
    message: str
    code: str = "invalid_value"

    def __str__(self) -> str:
        return self.message


def deprecated(what: str, instead: str) -> str:
    """The message refusing chat's deprecated function calling: ``what`` and its successor."""
    return f"{what} is deprecated and not supported; use {instead} instead."


def _refuse(param: str, what: str) -> Untranslatable:
    return Untranslatable(
        param,
        f"{what} is not supported by this model: its upstream speaks only the chat completions"
        f" API (param '{param}').",
        "unsupported_parameter",
    )


# --- requests -----------------------------------------------------------------------------


def chat_request(body: dict[str, Any], max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The chat completions body for a Responses ``body``. Raises ``Untranslatable``."""
    for name, neutral in _REFUSED.items():
        value = body.get(name)
        if value is not None and value not in neutral:
            raise _refuse(name, f"'{name}'")
    for name, instead in LEGACY_CHAT_FIELDS.items():
        if body.get(name) is not None:  # not Responses fields: they would pass through
            raise Untranslatable(
                name,
                deprecated(f"'{name}'", f"'{instead}'"),
                RequestErrorCode.LEGACY_FUNCTION_CALLING,
            )
    out: dict[str, Any] = {  # an explicit null means "not set": some servers refuse nulls
        k: v
        for k, v in body.items()
        if v is not None and k not in _KEPT_BY_GATEWAY and k not in _REFUSED
    }
    for name in ("text", "tools", "tool_choice", "reasoning", "max_output_tokens"):
        out.pop(name, None)
    out["model"] = body.get("model")
    out["messages"] = messages(body)
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    limit = body.get("max_output_tokens")
    if limit is not None:
        out[max_tokens_field] = limit
    if body.get("safety_identifier") is not None:
        out.pop("safety_identifier")
        out.setdefault("user", body["safety_identifier"])
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(_list(tools, "tools"))]
    elif "parallel_tool_calls" in out:
        del out["parallel_tool_calls"]  # chat servers refuse it without tools
    choice = body.get("tool_choice")
    if choice is not None and (tools or choice not in ("auto", "none")):
        # Without tools, "auto" and "none" mean the same as leaving it out, which chat
        # servers prefer (some refuse tool_choice without tools).
        out["tool_choice"] = _tool_choice(choice)
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    effort = _reasoning_effort(body.get("reasoning"))
    if effort is not None:
        out["reasoning_effort"] = effort
    return out


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise Untranslatable(param, f"Invalid '{param}': expected a list.")
    return value


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages: ``instructions`` as a leading system message, then the input."""
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        if not isinstance(instructions, str):
            raise _refuse("instructions", "'instructions' that are not a string")
        out.append({"role": "system", "content": instructions})
    given = body.get("input")
    if given is None and body.get("previous_response_id") is not None:
        return out  # checked at acceptance before the history is put in; again after
    if isinstance(given, str):
        out.append({"role": "user", "content": given})
        return out
    for index, item in enumerate(_list(given, "input")):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise Untranslatable(param, f"Invalid '{param}': expected an object.")
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, param))
        elif kind == "function_call":
            call = {
                "id": _str(item, "call_id", param),
                "type": "function",
                "function": {
                    "name": _str(item, "name", param),
                    "arguments": _str(item, "arguments", param),
                },
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # one turn, parallel calls
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = _joined_text(output, f"{param}.output")
            if not isinstance(output, str):
                raise Untranslatable(f"{param}.output", f"Invalid '{param}.output'.")
            out.append(
                {"role": "tool", "tool_call_id": _str(item, "call_id", param), "content": output}
            )
        elif kind == "reasoning":
            # A reasoning model's earlier thinking, replayed with the output it came with:
            # chat takes none back (servers' templates strip it), so it is not sent.
            continue
        else:
            raise _refuse(f"{param}.type", f"An input item of type '{kind}'")
    return _one_leading_system(out)


def _one_leading_system(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leading system messages (instructions, developer items) merged into one: many chat
    templates refuse a second system message."""
    if len(out) < 2 or out[1]["role"] != "system" or out[0]["role"] != "system":
        return out
    count = 0
    while count < len(out) and out[count]["role"] == "system":
        count += 1
    merged = "\n\n".join(m["content"] for m in out[:count])
    return [{"role": "system", "content": merged}, *out[count:]]


def _str(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise Untranslatable(f"{param}.{name}", f"Invalid '{param}.{name}': expected a string.")
    return value


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise Untranslatable(
            f"{param}.role", f"Invalid '{param}.role': expected system, developer, user or"
            " assistant."
        )  # fmt: skip
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts = _list(content, f"{param}.content")
    if role != "user":  # system and assistant content: text only, as one string
        return {"role": role, "content": _joined_text(parts, f"{param}.content")}
    chat_parts = [_user_part(p, f"{param}.content[{i}]") for i, p in enumerate(parts)]
    if len(chat_parts) == 1 and chat_parts[0]["type"] == "text":
        return {"role": role, "content": chat_parts[0]["text"]}  # what every server reads
    return {"role": role, "content": chat_parts}


def _joined_text(parts: list[Any], param: str) -> str:
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise Untranslatable(f"{param}[{i}]", f"Invalid '{param}[{i}]'.")
        if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise _refuse(f"{param}[{i}].type", f"A content part of type '{part.get('type')}'")
    return "".join(texts)


def _user_part(part: Any, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise Untranslatable(param, f"Invalid '{param}'.")
    kind = part.get("type")
    if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail") not in (None, "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_image":
        raise _refuse(f"{param}.file_id", "An input image given by 'file_id'")
    raise _refuse(f"{param}.type", f"A content part of type '{kind}'")


def _tool(tool: Any, index: int) -> dict[str, Any]:
    param = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise _refuse(f"{param}.type", f"The tool type '{kind}'")
    function = {"name": _str(tool, "name", param)}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _str(choice, "name", "tool_choice")}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise _refuse("tool_choice", f"The tool_choice '{kind}'")


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise Untranslatable("text", "Invalid 'text': expected an object.")
    if text.get("verbosity") is not None:
        raise _refuse("text.verbosity", "'text.verbosity'")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict):
        raise Untranslatable("text.format", "Invalid 'text.format': expected an object.")
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {"name": _str(fmt, "name", "text.format"), "schema": fmt.get("schema")}
        for name in ("description", "strict"):
            if fmt.get(name) is not None:
                schema[name] = fmt[name]
        return {"type": "json_schema", "json_schema": schema}
    raise _refuse("text.format.type", f"The text format '{fmt.get('type')}'")


def _reasoning_effort(reasoning: Any) -> Any:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise Untranslatable("reasoning", "Invalid 'reasoning': expected an object.")
    for name in ("summary", "generate_summary"):
        if reasoning.get(name) is not None:
            raise _refuse(f"reasoning.{name}", f"'reasoning.{name}'")
    return reasoning.get("effort")


def rename_token_limit(body: dict[str, Any], field: str) -> dict[str, Any]:
    """A chat body whose token limit is in ``field`` (``max_tokens`` or
    ``max_completion_tokens``), the one the deployment understands."""
    other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
    if other not in body:
        return body
    out = dict(body)
    value = out.pop(other)
    if value is not None or field not in out:
        out[field] = value
    return out


# --- answers ------------------------------------------------------------------------------


def _echo(request: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as a Response object shows them."""
    reasoning = request.get("reasoning") or {}
    return {
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "store": request.get("store", True),
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "user": request.get("user"),
        "background": False,
        "service_tier": "default",
        "error": None,
    }


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """Chat usage in the Responses names."""
    if not isinstance(usage, dict):
        return None
    given = usage.get("prompt_tokens") or 0
    produced = usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": produced,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens") or given + produced,
    }


def _calls(value: Any) -> list[Any]:
    """A message's tool calls (some TGI versions send one call as an object, not a list)."""
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else []


def _arguments(value: Any) -> str:
    """A call's arguments as the JSON text Responses carries (TGI sends an object)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _ending(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """The Response's status and incomplete_details for a chat ``finish_reason``."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": parts,
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def response_object(
    request: dict[str, Any],
    output: list[dict[str, Any]],
    *,
    response_id: str,
    created_at: int,
    status: str,
    incomplete: dict[str, Any] | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A whole Response object; ``model`` is the one the client asked for."""
    obj = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": request.get("model"),
        "status": status,
        "incomplete_details": incomplete,
        "output": output,
        "usage": usage,
        **_echo(request),
    }
    if status == "completed":
        obj["completed_at"] = int(time.time())
    return obj


def response_from_chat(request: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """The Response object for a chat completion answering the Responses ``request``."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    thought = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thought, str) and thought:
        output.append(_reasoning_item(new_id("rs_"), thought))
    parts = []
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append(text_part(message["content"]))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        output.append(_message_item(new_id("msg_"), parts, "completed"))
    for call in _calls(message.get("tool_calls")):
        function = call.get("function") or {}
        output.append(
            _call_item(
                new_id("fc_"),
                call.get("id") or new_id("call_"),
                function.get("name") or "",
                _arguments(function.get("arguments")),
                "completed",
            )
        )
    status, incomplete = _ending(choice.get("finish_reason"))
    created = chat.get("created")
    return response_object(
        request,
        output,
        response_id=new_id("resp_"),
        created_at=created if isinstance(created, int) else int(time.time()),
        status=status,
        incomplete=incomplete,
        usage=usage_from_chat(chat.get("usage")),
    )


# --- streams ------------------------------------------------------------------------------


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
            for call in _calls(delta.get("tool_calls")):
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
            item = _message_item(new_id("msg_"), [], "in_progress")
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
        message, events = self._open_message()
        loc = {"item_id": message.item["id"], "output_index": message.index}
        parts = message.item["content"]
        if not parts or parts[-1]["type"] != "output_text":
            message.settle_part()
            parts.append(text_part(""))
            events.append(
                self._event(
                    "response.content_part.added",
                    **loc,
                    content_index=len(parts) - 1,
                    part=text_part(""),
                )
            )
        message.pieces.append(text)
        events.append(
            self._event(
                "response.output_text.delta",
                **loc,
                content_index=len(parts) - 1,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _refusal_delta(self, text: str) -> list[dict[str, Any]]:
        message, events = self._open_message()
        loc = {"item_id": message.item["id"], "output_index": message.index}
        parts = message.item["content"]
        if not parts or parts[-1]["type"] != "refusal":
            message.settle_part()
            parts.append({"type": "refusal", "refusal": ""})
            events.append(
                self._event(
                    "response.content_part.added",
                    **loc,
                    content_index=len(parts) - 1,
                    part={"type": "refusal", "refusal": ""},
                )
            )
        message.pieces.append(text)
        events.append(
            self._event("response.refusal.delta", **loc, content_index=len(parts) - 1, delta=text)
        )
        return events

    def _call_delta(self, call: Any) -> list[dict[str, Any]]:
        if not isinstance(call, dict):
            return []
        events = self._close_reasoning() + self._close_message()
        index = call.get("index", 0)
        function = call.get("function") or {}
        opened = self._calls.get(index)
        if opened is None:
            item = _call_item(
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
        arguments = _arguments(function.get("arguments"))
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
        item = _reasoning_item(opened.item["id"], opened.text)
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
        status, incomplete = _ending(self.finish_reason)
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
