"""Chat completions as Anthropic Messages and back (app/openai/anthropic_messages.py).

Produced params are checked against the anthropic SDK's request types (its TypedDicts,
validated by pydantic), the Messages fed in with its ``Message`` model, the answers with
the openai SDK's ``ChatCompletion`` and ``Response``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from anthropic.types import Message
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages import MessageBatchIndividualResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import TypeAdapter

from app.openai.anthropic_messages import (
    DEFAULT_MAX_TOKENS,
    NotForAnthropic,
    chat_completion,
    error_of,
    messages_params,
)
from app.openai.chat_answer import response_from_chat
from app.openai.chat_request import Untranslatable, chat_request
from app.vocabulary import ErrorCode, response_error_code
from tests.support.chat_only import WEATHER, responses_request

_REQUEST = MessageCreateParamsNonStreaming
_PARAMS = TypeAdapter(_REQUEST)
PNG = "iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBE"
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _materialized(value: Any) -> Any:
    """pydantic validates an ``Iterable`` field lazily: iterate it all to validate it all."""
    if isinstance(value, dict):
        return {k: _materialized(v) for k, v in value.items()}
    if isinstance(value, list | Iterator):
        return [_materialized(v) for v in value]
    return value


def _valid(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` after checking them with the anthropic SDK's request type (which ignores
    unknown keys: the top level's are checked apart)."""
    _materialized(_PARAMS.validate_python(params))
    known = _REQUEST.__required_keys__ | _REQUEST.__optional_keys__
    assert set(params) <= known, set(params) - known
    return params


def _params(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return _valid(messages_params({"model": "asked", **body}, model="claude-x"))


def _message(content: list[dict[str, Any]], stop: str = "end_turn", **usage: Any) -> dict[str, Any]:
    """An Anthropic Message, checked with the SDK's model."""
    message = {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }
    Message.model_validate(message)
    return message


def _chat(message: dict[str, Any]) -> ChatCompletion:
    return ChatCompletion.model_validate(chat_completion(message, model="asked", created=7))


# Requests


def test_a_plain_request():
    params = _params(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "ann"},
        ],
        temperature=1,  # OpenAI's defaults: Anthropic's sampling, not sent
        top_p=1.0,
        stop="END",
        user="u-1",
        stream=True,
        stream_options={"include_usage": True},
        store=False,
        service_tier="flex",
        metadata={"k": "v"},
        seed=3,
        n=1,
        logprobs=False,
        frequency_penalty=0,
    )
    assert params == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }


def test_the_sdk_check_catches_a_bad_block():
    bad = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "A"}}
    ]}]}  # fmt: skip
    with pytest.raises(ValueError):
        _valid(bad)
    with pytest.raises(AssertionError):
        _valid({"model": "m", "max_tokens": 1, "messages": [], "stop": ["x"]})


def test_sampling_parameters_only_where_the_upstream_takes_them():
    for name, value in (("temperature", 0.2), ("top_p", 0.9), ("top_k", 40)):
        with pytest.raises(NotForAnthropic) as info:
            _params(**{name: value})
        assert info.value.param == name and info.value.code == "unsupported_parameter"
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "top_p": 0.9,
            "top_k": 40}  # fmt: skip
    params = messages_params(body, model="m", sampling=True)
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.2, 0.9, 40)
    with pytest.raises(NotForAnthropic) as info:
        messages_params({**body, "temperature": 1.5}, model="m", sampling=True)
    assert info.value.param == "temperature"


def test_token_limits():
    assert _params(max_tokens=10)["max_tokens"] == 10
    assert _params(max_completion_tokens=20, max_tokens=10)["max_tokens"] == 20
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert messages_params(body, model="m", default_max_tokens=99)["max_tokens"] == 99


def test_several_system_and_developer_messages_become_text_blocks():
    params = _params(
        messages=[
            {"role": "system", "content": "one"},
            {"role": "developer", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "three"},  # moved to the top: no system turns
        ]
    )
    assert params["system"] == [
        {"type": "text", "text": "one"},
        {"type": "text", "text": "two"},
        {"type": "text", "text": "three"},
    ]
    assert params["messages"] == [{"role": "user", "content": "hi"}]


def test_images_and_pdfs():
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.jpg", "detail": "low"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": PDF}},
    ]  # fmt: skip
    params = _params(messages=[{"role": "user", "content": content}])
    assert params["messages"][0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}, ".image_url.url"),
        ({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}, ".image_url.url"),
        ({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, ".type"),
        ({"type": "file", "file": {"file_id": "file-1"}}, ".file.file_id"),
        ({"type": "file", "file": {"file_data": "data:text/plain;base64,AA"}}, ".file.file_data"),
    ],
)
def test_parts_anthropic_cannot_take_are_refused(part: dict[str, Any], param: str):
    with pytest.raises(NotForAnthropic) as info:
        messages_params({"messages": [{"role": "user", "content": [part]}]}, model="m")
    assert info.value.param == "messages[0].content[0]" + param


def test_a_tool_conversation_alternates():
    params = _params(
        messages=[
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "checking",
                "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                    {"id": "c2", "type": "function",
                     "function": {"name": "weather", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "rain"}]},
            {"role": "user", "content": "thanks"},
            {"role": "user", "content": "and tomorrow?"},
            {"role": "assistant", "content": None, "tool_calls": []},  # empty: left out
        ],
        tools=[CHAT_WEATHER],
    )  # fmt: skip
    assert params["messages"] == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "c2", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": [{"type": "text", "text": "rain"}],
                },
                {"type": "text", "text": "thanks"},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    assert params["tools"] == [
        {
            "name": "weather",
            "description": "the weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert "tool_choice" not in params


def test_tool_results_come_first_in_a_merged_user_turn():
    params = _params(
        messages=[
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "user", "content": "note"},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        tools=[CHAT_WEATHER],
    )  # fmt: skip
    assert [b["type"] for b in params["messages"][1]["content"]] == ["tool_result", "text"]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "weather"}}, None,
         {"type": "tool", "name": "weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
    ],
)  # fmt: skip
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None):
    strict = {**CHAT_WEATHER, "function": {**CHAT_WEATHER["function"], "strict": True}}
    params = _params(tools=[strict], tool_choice=choice, parallel_tool_calls=parallel)
    assert params.get("tool_choice") == expected
    assert params["tools"][0]["strict"] is True


def test_tool_choice_without_tools():
    assert "tool_choice" not in _params(tool_choice="none", parallel_tool_calls=True)
    with pytest.raises(NotForAnthropic) as info:
        _params(tool_choice="required")
    assert info.value.param == "tool_choice"


def test_structured_outputs_and_effort():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
    params = _params(response_format=fmt, reasoning_effort="low")
    assert params["output_config"] == {
        "format": {"type": "json_schema", "schema": schema},
        "effort": "low",
    }
    assert "output_config" not in _params(response_format={"type": "text"})


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
        ({"presence_penalty": 1}, "presence_penalty", "unsupported_parameter"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "unsupported_parameter"),
        ({"audio": {"voice": "x", "format": "wav"}}, "audio", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"verbosity": "low"}, "verbosity", "unsupported_parameter"),
        ({"some_extension": 1}, "some_extension", "unsupported_parameter"),
        ({"temperature": 0}, "temperature", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format",
         "unsupported_parameter"),
        ({"reasoning_effort": "minimal"}, "reasoning_effort", "unsupported_parameter"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type",
         "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "legacy_function_calling"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]},
         "messages[0].role", "legacy_function_calling"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
         "messages[0].tool_calls[0].function.arguments", "invalid_value"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
         "invalid_value"),
        ({"stop": [1]}, "stop", "invalid_value"),
    ],
)  # fmt: skip
def test_what_anthropic_cannot_express_is_refused(body: dict[str, Any], param: str, code: str):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(NotForAnthropic) as info:
        messages_params(body, model="m")
    assert (info.value.param, info.value.code) == (param, code)
    assert isinstance(info.value, ValueError) and isinstance(info.value, Untranslatable)
    if code != "legacy_function_calling":  # that message names what replaced it instead
        assert param in str(info.value)


# Answers


def test_a_text_answer():
    message = _message(
        [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    chat = _chat(message)
    assert chat.id == "chatcmpl-msg_01abc" and chat.model == "asked" and chat.created == 7
    choice = chat.choices[0]
    assert choice.message.content == "Hello there" and choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (130, 5)
    assert chat.usage.total_tokens == 135
    assert chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == 100


def test_tool_use_and_thinking():
    message = _message(
        [
            {"type": "thinking", "thinking": "the user wants weather", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        "tool_use",
        output_tokens_details={"thinking_tokens": 3},
    )
    chat = _chat(message)
    answer = chat.choices[0].message
    assert chat.choices[0].finish_reason == "tool_calls"
    assert answer.content is None and answer.tool_calls is not None
    call = answer.tool_calls[0]
    assert call.id == "toolu_1" and call.type == "function"
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {
        "city": "Paris"
    }
    assert getattr(answer, "reasoning_content", None) == "the user wants weather"
    assert chat.usage is not None and chat.usage.completion_tokens_details is not None
    assert chat.usage.completion_tokens_details.reasoning_tokens == 3


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_finish_reasons(stop: str, finish: str):
    assert _chat(_message([{"type": "text", "text": "x"}], stop)).choices[0].finish_reason == finish


def test_a_request_round_trip_replays_the_answer():
    """An answer's tool call, sent back in chat form, becomes the same tool_use."""
    block = {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Rome"}}
    chat = chat_completion(_message([block], "tool_use"), model="asked", created=1)
    replay = [
        {"role": "user", "content": "weather?"},
        chat["choices"][0]["message"],
        {"role": "tool", "tool_call_id": "toolu_9", "content": "hot"},
    ]
    params = _params(messages=replay, tools=[CHAT_WEATHER])
    assert params["messages"][1] == {"role": "assistant", "content": [block]}
    assert params["messages"][2]["content"][0]["tool_use_id"] == "toolu_9"


# Batch results


def _result(result: dict[str, Any]) -> dict[str, Any]:
    MessageBatchIndividualResponse.model_validate({"custom_id": "r1", "result": result})
    return result


@pytest.mark.parametrize(
    ("error_type", "code", "retryable"),
    [
        ("invalid_request_error", "upstream_400", False),
        ("authentication_error", "upstream_401", False),
        ("billing_error", "upstream_402", False),
        ("permission_error", "upstream_403", False),
        ("not_found_error", "upstream_404", False),
        ("rate_limit_error", "upstream_429", True),
        ("api_error", "upstream_500", True),
        ("timeout_error", "upstream_504", True),
        ("overloaded_error", "upstream_529", True),
    ],
)
def test_errored_results(error_type: str, code: str, retryable: bool):
    result = _result(
        {
            "type": "errored",
            "error": {"type": "error", "error": {"type": error_type, "message": " bad thing "}},
        }
    )
    assert error_of(result) == {"code": code, "message": "bad thing", "retryable": retryable}


def test_an_unknown_or_bare_error():
    result = {"type": "errored", "error": {"type": "error", "error": {"type": "new_error"}}}
    failure = error_of(result)
    assert failure["code"] == "upstream_500" and not failure["retryable"]
    assert "new_error" in failure["message"]
    bare = {"type": "errored", "error": {"type": "overloaded_error", "message": "busy"}}
    assert error_of(bare) == {"code": "upstream_529", "message": "busy", "retryable": True}


def test_expired_and_canceled_results():
    expired = error_of(_result({"type": "expired"}))
    assert expired["code"] == ErrorCode.UPSTREAM_JOB_EXPIRED and expired["retryable"]
    assert response_error_code(expired["code"]) == "rate_limit_exceeded"
    canceled = error_of(_result({"type": "canceled"}))
    assert canceled["code"] == ErrorCode.UPSTREAM_JOB_CANCELLED and not canceled["retryable"]
    assert expired["message"] and canceled["message"]
    with pytest.raises(ValueError, match="succeeded"):
        error_of({"type": "succeeded", "message": {}})


# Composed with the Responses translation


def test_a_responses_call_through_anthropic():
    request = responses_request(
        instructions="be brief",
        input=[
            {"role": "user", "content": [
                {"type": "input_text", "text": "weather?"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
            ]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=50,
        text={"format": {"type": "json_schema", "name": "w",
                         "schema": {"type": "object", "properties": {}}}},
        reasoning={"effort": "high"},
        safety_identifier="hashed",
        store=False,
        stream=False,
    )  # fmt: skip
    params = _valid(messages_params(chat_request(request), model="claude-x"))
    assert params["system"] == "be brief" and params["max_tokens"] == 50
    assert params["tool_choice"] == {"type": "any"} and params["tools"][0]["strict"] is True
    assert params["metadata"] == {"user_id": "hashed"}
    assert params["output_config"]["effort"] == "high"
    assert [m["role"] for m in params["messages"]] == ["user", "assistant", "user"]

    message = _message(
        [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "text", "text": "It is sunny."},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "tool_use",
        cache_read_input_tokens=4,
        cache_creation_input_tokens=6,
    )
    chat = chat_completion(message, model=request["model"], created=123)
    response = Response.model_validate(response_from_chat(request, chat))
    assert response.output_text == "It is sunny." and response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    call = response.output[2]
    assert call.type == "function_call" and call.call_id == "toolu_2"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert response.usage is not None and response.created_at == 123
    assert (response.usage.input_tokens, response.usage.output_tokens) == (20, 5)
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.model_dump()["input_tokens_details"]["cache_write_tokens"] == 6


def test_a_truncated_or_refused_responses_call():
    request = responses_request()
    params = _valid(messages_params(chat_request(request), model="claude-x"))
    assert params["messages"] == [{"role": "user", "content": "mock:key=x hi there"}]
    for stop, reason in (("max_tokens", "max_output_tokens"), ("refusal", "content_filter")):
        message = _message([{"type": "text", "text": "a"}], stop)
        chat = chat_completion(message, model="m", created=1)
        response = Response.model_validate(response_from_chat(request, chat))
        assert response.status == "incomplete" and response.incomplete_details is not None
        assert response.incomplete_details.reason == reason
