"""Chat completions as Anthropic Messages, for Anthropic's Message Batches API (no HTTP here).

:func:`messages_params` turns a chat completions request body into the ``params`` of one
Message Batches request; :func:`chat_completion` turns the Message of a ``succeeded`` result
into a chat completion; :func:`error_of` turns an ``errored``, ``canceled`` or ``expired``
result into a stored error and whether to try again. A Responses call composes with
:mod:`app.openai.chat_request` before and :mod:`app.openai.chat_answer` after.

A chat feature Anthropic cannot express raises :class:`NotForAnthropic` (an
:class:`~app.openai.chat_request.Untranslatable` and a ``ValueError``) naming the parameter
in OpenAI's style, so the call fails with a 400-like error instead of being silently
degraded. The decisions, field by field:

- ``messages``: ``system`` and ``developer`` messages become the top-level ``system`` (a
  string, or text blocks when there are several), wherever they stand: Anthropic has no
  mid-conversation system turn, so a late one joins the others at the top. Message ``name``
  is dropped (Anthropic has no participant names). ``tool`` messages become ``tool_result``
  blocks of a user turn; consecutive turns of one role are merged into one (Anthropic wants
  user and assistant to alternate), tool results first; empty turns are left out.
- Content parts: ``text`` (and an assistant's ``refusal``) become text blocks;
  ``image_url`` becomes an ``image`` block (a ``data:`` URL of JPEG, PNG, GIF or WebP a
  base64 source, an http(s) URL a url source; ``detail`` is dropped, Anthropic has none); a
  ``file`` part holding a PDF as ``file_data`` becomes a ``document`` block. Audio parts,
  files by ``file_id`` and other files are refused.
- ``tool_calls`` become ``tool_use`` blocks, their arguments parsed (they must be a JSON
  object); ``tools`` (function tools only; ``strict`` kept) become ``{name, description,
  input_schema}``; ``tool_choice`` ``auto``/``required``/``none``/a named function becomes
  ``auto``/``any``/``none``/``{"type": "tool"}``; ``parallel_tool_calls: false`` becomes
  ``disable_parallel_tool_use``. ``required`` or a named tool without tools is refused.
- ``max_completion_tokens`` (else ``max_tokens``) becomes ``max_tokens``, which Anthropic
  requires: ``default_max_tokens`` (:data:`DEFAULT_MAX_TOKENS`) when neither is given.
- Sampling: Anthropic's API version 2026-10-21 (the one its SDKs send since) has no
  ``temperature``, ``top_p`` or ``top_k`` and answers 400 to any of them, as do its models
  from Claude 4.7 on whatever the version. So ``temperature`` and ``top_p`` at 1 (OpenAI's
  defaults, the same sampling as Anthropic's) are dropped, and any other value is refused,
  unless the caller passes ``sampling=True`` (an older API version and model that take
  them): then they are kept as they are (not rescaled), ``temperature`` above 1 (Anthropic's
  maximum) is refused, and ``top_k`` (an extension some servers take) is kept too.
- ``stop`` becomes ``stop_sequences``. ``user`` (else ``safety_identifier``) becomes
  ``metadata.user_id``.
- ``response_format``: ``json_schema`` becomes ``output_config.format`` (Anthropic's
  structured outputs, generally available; the beta's ``output_format`` is deprecated): the
  schema is kept, ``name`` and ``description`` dropped, ``strict`` implied (Anthropic always
  constrains). A model without structured outputs refuses the call itself. ``json_object``
  is refused: Anthropic has no JSON mode without a schema.
- ``reasoning_effort`` ``low``/``medium``/``high``/``xhigh`` becomes
  ``output_config.effort`` (the same words; a model without it refuses the call itself);
  ``none`` and ``minimal`` are refused (no Anthropic level means "no reasoning").
- Refused unless absent or neutral, as they change the answer and Anthropic has no
  equivalent: ``n`` > 1, ``logprobs``, ``top_logprobs``, ``frequency_penalty``,
  ``presence_penalty``, ``logit_bias``, ``audio``, ``modalities`` other than text,
  ``web_search_options``, ``verbosity`` other than medium; and chat's deprecated
  ``functions``/``function_call`` (code ``legacy_function_calling``).
- Dropped as they do not change what the answer means: ``stream`` and ``stream_options``
  (a batch answers whole), ``store``, ``metadata`` (tiergate's), ``service_tier``,
  ``prompt_cache_key``, ``prompt_cache_retention``, ``prediction`` (latency only) and
  ``seed`` (best effort even at OpenAI: sampling is not reproducible anyway).
- Any other field is refused: Anthropic rejects fields it does not know.

Answers: the chat completion's ``id`` is ``chatcmpl-`` and Anthropic's message id (which
stays readable in it); ``model`` is the name the client asked for. Text blocks are joined
into ``content``, ``tool_use`` blocks become ``tool_calls`` (arguments as compact JSON),
``thinking`` blocks become ``reasoning_content`` (the field chat servers use, which
:mod:`app.openai.chat_answer` reads); redacted thinking and server-tool blocks (never asked
for here) are left out. ``stop_reason`` ``end_turn``/``stop_sequence``/``pause_turn`` is
``stop``, ``max_tokens``/``model_context_window_exceeded`` ``length``, ``tool_use``
``tool_calls``, ``refusal`` ``content_filter``. ``prompt_tokens`` counts fresh, cache-read
and cache-written input; ``cached_tokens`` the cache reads, and ``cache_write_tokens`` (not
an OpenAI chat field) the cache writes, which Anthropic prices apart.

Failed results: an ``errored`` one is stored as ``upstream_<status>``, the HTTP status of
its Anthropic error type (``invalid_request_error`` 400 ... ``overloaded_error`` 529, as
tiergate stores any upstream's error answer), with the provider's message; rate limits,
``api_error``, ``timeout_error`` and ``overloaded_error`` may be tried again, the others
(and types this module does not know, stored as 500) are final. ``expired`` (the provider's
24 hours passed) is ``upstream_batch_expired``, which may be tried again; ``canceled`` is
``upstream_batch_cancelled``, final (the caller knows whether it canceled the batch itself).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypedDict

from app.openai.chat_request import LEGACY_CHAT_FIELDS, Untranslatable, deprecated
from app.openai.upstream_errors import MAX_MESSAGE_CHARS
from app.vocabulary import MESSAGES, ErrorCode, RequestErrorCode, upstream_status

# Anthropic requires max_tokens; a request that sets no limit gets this one.
DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1 (OpenAI's 0..2)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
EFFORTS = frozenset({"low", "medium", "high", "xhigh"})

# Chat fields that change the answer and that Anthropic cannot express: refused unless
# absent or one of their neutral values.
_REFUSED: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "audio": (),
    "modalities": (["text"],),
    "web_search_options": (),
    "verbosity": ("medium",),
}
# Chat fields dropped: they do not change what the answer means (see the module docstring).
_DROPPED = frozenset(
    {
        "stream", "stream_options", "store", "metadata", "service_tier", "prompt_cache_key",
        "prompt_cache_retention", "prediction", "seed",
    }
)  # fmt: skip
# Chat fields read by the translation.
_TRANSLATED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "top_k", "stop", "user", "safety_identifier", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "reasoning_effort",
    }
)  # fmt: skip
# Sampling parameters, sent only to an upstream that takes them; each with its neutral value
# (dropped elsewhere), None when any value changes the answer.
_SAMPLING: dict[str, Any] = {"temperature": 1, "top_p": 1, "top_k": None}
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's error types: the HTTP status each comes with, and whether to try again.
_ERROR_TYPES: dict[str, tuple[int, bool]] = {
    "invalid_request_error": (400, False),
    "authentication_error": (401, False),
    "billing_error": (402, False),
    "permission_error": (403, False),
    "not_found_error": (404, False),
    "request_too_large": (413, False),
    "rate_limit_error": (429, True),
    "api_error": (500, True),
    "timeout_error": (504, True),
    "overloaded_error": (529, True),
}
# An error type this table does not know: a server error, not tried again.
_UNKNOWN_ERROR = (500, False)


class NotForAnthropic(Untranslatable, ValueError):
    """A chat request Anthropic's Messages API cannot express; ``param`` names the field."""


class BatchLineError(TypedDict):
    """A failed batch result: the stored error (``code``, ``message``) and whether the
    request may be sent again."""

    code: str
    message: str
    retryable: bool


def _refuse(param: str, what: str) -> NotForAnthropic:
    return NotForAnthropic(
        param,
        f"{what} is not supported by this model: its upstream is Anthropic's Messages API,"
        f" which has no equivalent (param '{param}').",
        RequestErrorCode.UNSUPPORTED_PARAMETER,
    )


def _invalid(param: str, what: str) -> NotForAnthropic:
    return NotForAnthropic(param, f"Invalid '{param}': {what}.", RequestErrorCode.INVALID_VALUE)


def messages_params(
    chat_body: dict[str, Any],
    *,
    model: str,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    sampling: bool = False,
) -> dict[str, Any]:
    """Anthropic Messages ``params`` for a chat completions body, sent to ``model`` (the
    provider's name); ``sampling``: whether the upstream takes ``temperature``, ``top_p``
    and ``top_k`` (API version 2023-06-01, models before Claude 4.7). Raises
    :class:`NotForAnthropic`."""
    for name, instead in LEGACY_CHAT_FIELDS.items():
        if chat_body.get(name) is not None:
            raise NotForAnthropic(
                name,
                deprecated(f"'{name}'", f"'{instead}'"),
                RequestErrorCode.LEGACY_FUNCTION_CALLING,
            )
    for name, value in chat_body.items():
        if value is None or name in _TRANSLATED or name in _DROPPED:
            continue
        if name not in _REFUSED:
            raise _refuse(name, f"'{name}'")
        if value not in _REFUSED[name]:
            raise _refuse(name, f"'{name}' set to {json.dumps(value)}")
    system, turns = _conversation(chat_body.get("messages"))
    limit = chat_body.get("max_completion_tokens")
    if limit is None:
        limit = chat_body.get("max_tokens")
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": default_max_tokens if limit is None else limit,
        "messages": turns,
    }
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out.update(_sampling(chat_body, sampling))
    stop = chat_body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        if not all(isinstance(s, str) for s in stop):
            raise _invalid("stop", "expected a string or a list of strings")
        out["stop_sequences"] = stop
    elif stop is not None and stop != []:
        raise _invalid("stop", "expected a string or a list of strings")
    user = chat_body.get("user") or chat_body.get("safety_identifier")
    if user is not None:
        out["metadata"] = {"user_id": user}
    _add_tools(out, chat_body)
    config: dict[str, Any] = {}
    fmt = _output_format(chat_body.get("response_format"))
    if fmt is not None:
        config["format"] = fmt
    effort = chat_body.get("reasoning_effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise _refuse("reasoning_effort", f"The reasoning_effort {json.dumps(effort)}")
        config["effort"] = effort
    if config:
        out["output_config"] = config
    return out


def _sampling(body: dict[str, Any], taken: bool) -> dict[str, Any]:
    """The sampling parameters to send: none unless the upstream ``taken`` them."""
    given = {n: body[n] for n in _SAMPLING if body.get(n) is not None}
    if not taken:
        for name, value in given.items():
            if value != _SAMPLING[name]:
                raise _refuse(name, f"'{name}' set to {json.dumps(value)}")
        return {}
    temperature = given.get("temperature")
    if isinstance(temperature, int | float) and temperature > MAX_TEMPERATURE:
        raise _refuse("temperature", f"A temperature above {MAX_TEMPERATURE:g}")
    return given


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(param, "expected a list")
    return value


def _dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(param, "expected an object")
    return value


def _str(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise _invalid(f"{param}.{name}", "expected a string")
    return value


def _conversation(given: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system text blocks and the alternating user/assistant turns of chat messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, raw in enumerate(_list(given, "messages")):
        param = f"messages[{index}]"
        message = _dict(raw, param)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, f"{param}.content"))
        elif role == "user":
            _append(turns, "user", _user_blocks(content, f"{param}.content"))
        elif role == "assistant":
            if message.get("audio") is not None:
                raise _refuse(f"{param}.audio", "An assistant message's audio")
            blocks = _text_blocks(content, f"{param}.content")
            calls = message.get("tool_calls") or []
            for i, call in enumerate(_list(calls, f"{param}.tool_calls")):
                blocks.append(_tool_use(call, f"{param}.tool_calls[{i}]"))
            _append(turns, "assistant", blocks)
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, param)])
        elif role == "function":
            raise NotForAnthropic(
                f"{param}.role",
                deprecated("The message role 'function'", "role 'tool'"),
                RequestErrorCode.LEGACY_FUNCTION_CALLING,
            )
        else:
            raise _invalid(f"{param}.role", "expected system, developer, user, assistant or tool")
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]  # the plain form, as most clients send it
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Adds a turn, merged into the last one if it has the same role (Anthropic wants the
    roles to alternate); tool results come first in a user turn, as Anthropic requires."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        merged = turns[-1]["content"] + blocks
        turns[-1]["content"] = sorted(merged, key=lambda b: b["type"] != "tool_result")
    else:
        turns.append({"role": role, "content": blocks})


def _text_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """Text-only content (system, assistant, tool) as text blocks; empty text is left out."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for i, raw in enumerate(_list(content, param)):
        part = _dict(raw, f"{param}[{i}]")
        kind = part.get("type")
        if kind == "text":
            text = _str(part, "text", f"{param}[{i}]")
        elif kind == "refusal":
            text = _str(part, "refusal", f"{param}[{i}]")
        else:
            raise _refuse(f"{param}[{i}].type", f"A content part of type '{kind}' here")
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_blocks(content, param)
    blocks = []
    for i, raw in enumerate(_list(content, param)):
        part_param = f"{param}[{i}]"
        part = _dict(raw, part_param)
        kind = part.get("type")
        if kind == "text":
            text = _str(part, "text", part_param)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{part_param}.image_url"))
        elif kind == "file":
            blocks.append(_document(part.get("file"), f"{part_param}.file"))
        else:
            raise _refuse(f"{part_param}.type", f"A content part of type '{kind}'")
    return blocks


def _image(value: Any, param: str) -> dict[str, Any]:
    url = value if isinstance(value, str) else _str(_dict(value, param), "url", param)
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    data = _DATA_URL.fullmatch(url)
    if data is None:
        raise _invalid(f"{param}.url", "expected an http(s) URL or a base64 data URL")
    if data.group(1) not in IMAGE_TYPES:
        raise _refuse(f"{param}.url", f"An image of type '{data.group(1)}'")
    source = {"type": "base64", "media_type": data.group(1), "data": data.group(2)}
    return {"type": "image", "source": source}


def _document(value: Any, param: str) -> dict[str, Any]:
    file = _dict(value, param)
    if file.get("file_id") is not None:
        raise _refuse(f"{param}.file_id", "A file given by 'file_id'")
    data = _DATA_URL.fullmatch(_str(file, "file_data", param))
    if data is None or data.group(1) != "application/pdf":
        raise _refuse(f"{param}.file_data", "A file that is not a PDF data URL")
    source = {"type": "base64", "media_type": "application/pdf", "data": data.group(2)}
    return {"type": "document", "source": source}


def _tool_use(raw: Any, param: str) -> dict[str, Any]:
    call = _dict(raw, param)
    if call.get("type", "function") != "function":
        raise _refuse(f"{param}.type", f"A tool call of type '{call.get('type')}'")
    function = _dict(call.get("function"), f"{param}.function")
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if arguments else {}
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise _invalid(f"{param}.function.arguments", "expected a JSON object")
    return {
        "type": "tool_use",
        "id": _str(call, "id", param),
        "name": _str(function, "name", f"{param}.function"),
        "input": parsed,
    }


def _tool_result(message: dict[str, Any], param: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _str(message, "tool_call_id", param),
    }
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        blocks = _text_blocks(content, f"{param}.content")
        if blocks:
            block["content"] = blocks
    return block


def _add_tools(out: dict[str, Any], body: dict[str, Any]) -> None:
    """``tools`` and ``tool_choice`` (with ``parallel_tool_calls``) into ``out``."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "auto", "none"):
            raise _invalid("tool_choice", "a tool choice other than auto or none needs tools")
        return
    out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(_list(tools, "tools"))]
    anthropic_choice = _tool_choice(choice)
    if body.get("parallel_tool_calls") is False:
        anthropic_choice = anthropic_choice or {"type": "auto"}
        if anthropic_choice["type"] != "none":
            anthropic_choice["disable_parallel_tool_use"] = True
    if anthropic_choice is not None:
        out["tool_choice"] = anthropic_choice


def _tool(raw: Any, param: str) -> dict[str, Any]:
    tool = _dict(raw, param)
    if tool.get("type") != "function":
        raise _refuse(f"{param}.type", f"The tool type '{tool.get('type')}'")
    function = _dict(tool.get("function"), f"{param}.function")
    out: dict[str, Any] = {"name": _str(function, "name", f"{param}.function")}
    if function.get("description") is not None:
        out["description"] = function["description"]
    schema = function.get("parameters")
    out["input_schema"] = schema if schema is not None else {"type": "object", "properties": {}}
    if function.get("strict"):
        out["strict"] = True
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = _dict(choice.get("function"), "tool_choice.function")
        return {"type": "tool", "name": _str(function, "name", "tool_choice.function")}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise _refuse("tool_choice", f"The tool_choice '{kind}'")


def _output_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    fmt = _dict(value, "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        raise _refuse("response_format", "A JSON response_format without a schema")
    if kind != "json_schema":
        raise _invalid("response_format.type", "expected text, json_object or json_schema")
    spec = _dict(fmt.get("json_schema"), "response_format.json_schema")
    schema = _dict(spec.get("schema"), "response_format.json_schema.schema")
    return {"type": "json_schema", "schema": schema}


def chat_completion(message: dict[str, Any], *, model: str, created: int) -> dict[str, Any]:
    """The chat completion for an Anthropic Message; ``model`` is the name the client
    asked for, ``created`` the Unix time to show."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thoughts.append(block.get("thinking") or "")
        elif kind == "tool_use":
            arguments = json.dumps(
                block.get("input") or {}, separators=(",", ":"), ensure_ascii=False
            )
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    answer: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        answer["tool_calls"] = calls
    if any(thoughts):
        answer["reasoning_content"] = "\n\n".join(t for t in thoughts if t)
    choice = {
        "index": 0,
        "message": answer,
        "finish_reason": _FINISH_REASONS.get(message.get("stop_reason") or "", "stop"),
        "logprobs": None,
    }
    return {
        "id": f"chatcmpl-{message.get('id')}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(message.get("usage") or {}),
    }


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's usage in chat's names: every input token counts as a prompt token."""
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + read + written
    produced = usage.get("output_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": produced,
        "total_tokens": prompt + produced,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
    }
    thinking = (usage.get("output_tokens_details") or {}).get("thinking_tokens")
    if isinstance(thinking, int):
        out["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return out


def error_of(result: dict[str, Any]) -> BatchLineError:
    """The error of a Message Batches result that did not succeed (``errored``,
    ``canceled``, ``expired``); raises ``ValueError`` for any other result."""
    kind = result.get("type")
    if kind == "expired":  # not processed within the provider's 24 hours: may be sent again
        code = ErrorCode.UPSTREAM_JOB_EXPIRED
        return {"code": code, "message": MESSAGES[code], "retryable": True}
    if kind == "canceled":  # someone canceled the provider's batch: the caller knows who
        code = ErrorCode.UPSTREAM_JOB_CANCELLED
        return {"code": code, "message": MESSAGES[code], "retryable": False}
    if kind != "errored":
        raise ValueError(f"not a failed batch result: {kind!r}")
    outer = result.get("error")
    outer = outer if isinstance(outer, dict) else {}
    inner = outer.get("error")  # {"type": "error", "error": {"type", "message"}}
    detail = inner if isinstance(inner, dict) else outer
    error_type = detail.get("type")
    status, retryable = _ERROR_TYPES.get(str(error_type), _UNKNOWN_ERROR)
    message = detail.get("message")
    if not isinstance(message, str) or not message.strip():
        message = f"The provider answered the request with an error of type '{error_type}'."
    return {
        "code": upstream_status(status),
        "message": message.strip()[:MAX_MESSAGE_CHARS],
        "retryable": retryable,
    }
