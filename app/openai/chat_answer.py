"""Chat completions as Response objects (:func:`response_from_chat`), for chat-only upstreams.

Also the pieces of a Response read from chat's fields (items, usage, status), which
:mod:`app.openai.chat_stream` builds a streamed Response from.
"""

from __future__ import annotations

import json
import time
from typing import Any

from app.ids import new_id
from app.vocabulary import Tier


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
        "service_tier": Tier.DEFAULT,
        "error": None,
    }


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """Chat usage in the Responses names."""
    if not isinstance(usage, dict):
        return None
    given = usage.get("prompt_tokens") or 0
    produced = usage.get("completion_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0  # not OpenAI's: Anthropic's cache writes
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": produced,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens") or given + produced,
    }


def tool_calls(value: Any) -> list[Any]:
    """A message's tool calls (some TGI versions send one call as an object, not a list)."""
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else []


def arguments_json(value: Any) -> str:
    """A call's arguments as the JSON text Responses carries (TGI sends an object)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def ending(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """The Response's status and incomplete_details for a chat ``finish_reason``."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": refusal}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": parts,
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
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
        output.append(reasoning_item(new_id("rs_"), thought))
    parts = []
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append(text_part(message["content"]))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append(refusal_part(message["refusal"]))
    if parts:
        output.append(message_item(new_id("msg_"), parts, "completed"))
    for call in tool_calls(message.get("tool_calls")):
        function = call.get("function") or {}
        output.append(
            call_item(
                new_id("fc_"),
                call.get("id") or new_id("call_"),
                function.get("name") or "",
                arguments_json(function.get("arguments")),
                "completed",
            )
        )
    status, incomplete = ending(choice.get("finish_reason"))
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
