"""Responses requests as chat completions requests, for chat-only upstreams (``api: chat``).

:func:`chat_request` translates a body; a Responses feature that chat cannot express raises
:class:`Untranslatable` naming the parameter: such a call is refused, never silently
degraded. Fields Responses does not define are passed through (a server's own extensions,
e.g. vLLM's ``top_k``). See docs/chat-upstreams.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
        RequestErrorCode.UNSUPPORTED_PARAMETER,
    )


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
