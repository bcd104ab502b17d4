"""Classification and validation of inference bodies (pure functions)."""

from __future__ import annotations

import json

import pytest

from app.keys import ApiKey
from app.openai.errors import APIError
from app.openai.validation import classify
from app.settings import Settings

ANY = ApiKey(id="key_1", name="a", models=None)
MOCK_ONLY = ApiKey(id="key_2", name="b", models=("mock",))


def call(endpoint: str, key: ApiKey = ANY, **body: object):
    return classify(endpoint, json.dumps(body).encode(), Settings(), key)


@pytest.mark.parametrize(
    ("body", "tier", "background", "deferred"),
    [
        ({}, "default", False, False),
        ({"service_tier": "auto"}, "default", False, False),
        ({"service_tier": "priority"}, "default", False, False),
        ({"service_tier": "flex"}, "flex", False, True),
        ({"background": True}, "default", True, True),
        ({"service_tier": "flex", "background": True}, "flex", True, True),
    ],
)
def test_tiers(body: dict, tier: str, background: bool, deferred: bool):
    result = call("/v1/responses", model="mock", input="x", **body)
    assert (result.tier, result.background, result.deferred) == (tier, background, deferred)


def test_errors_name_the_parameter():
    with pytest.raises(APIError) as info:
        call("/v1/chat/completions", model="mock", messages=[])
    assert (info.value.status, info.value.param) == (400, "messages")
    streamed = call("/v1/responses", model="mock", input="x", stream=True, background=True)
    assert streamed.deferred and streamed.background and streamed.stream
    flex = call("/v1/responses", model="mock", input="x", stream=True, service_tier="flex")
    assert flex.deferred and flex.stream


def test_model_access():
    with pytest.raises(APIError) as info:
        call("/v1/responses", model="nope", input="x")
    assert info.value.status == 404 and info.value.code == "model_not_found"
    settings = Settings()
    settings.apply_config({"models": [{"name": "big", "upstream": "http://x/v1"}]})
    with pytest.raises(APIError) as info:
        classify("/v1/responses", b'{"model": "big", "input": "x"}', settings, MOCK_ONLY)
    assert info.value.status == 403


def test_prompt_or_previous_response_replaces_input():
    assert call("/v1/responses", model="mock", previous_response_id="resp_1").tier == "default"


def test_metadata_limits():
    with pytest.raises(APIError):
        call("/v1/responses", model="mock", input="x", metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(APIError):
        call("/v1/responses", model="mock", input="x", metadata={"k" * 65: "v"})
    assert call("/v1/responses", model="mock", input="x", metadata={"k": "v" * 512})


def chat_settings() -> Settings:
    settings = Settings()
    settings.apply_config(
        {
            "models": [
                {"name": "local", "upstream": "http://127.0.0.1:1/v1", "api": "chat"},
                {"name": "cloud", "upstream": "http://127.0.0.1:2/v1", "fallbacks": ["local"]},
                {
                    "name": "mixed",
                    "deployments": [
                        {"name": "a", "upstream": "http://127.0.0.1:3/v1"},
                        {"name": "b", "upstream": "http://127.0.0.1:4/v1", "api": "chat"},
                    ],
                },
            ]
        }
    )
    return settings


@pytest.mark.parametrize("model", ["local", "cloud", "mixed"])
def test_a_chat_only_upstream_refuses_what_it_cannot_translate(model: str):
    body = {"model": model, "input": "x", "tools": [{"type": "web_search"}]}
    with pytest.raises(APIError) as info:
        classify("/v1/responses", json.dumps(body).encode(), chat_settings(), ANY)
    assert info.value.status == 400
    assert info.value.param == "tools[0].type" and info.value.code == "unsupported_parameter"


def test_only_calls_that_may_reach_chat_are_checked():
    settings = chat_settings()
    body = json.dumps({"model": "mixed", "input": "x", "include": ["reasoning"]}).encode()
    assert classify("/v1/responses", body, settings, ANY, pin="a").model.name == "mixed"
    with pytest.raises(APIError):
        classify("/v1/responses", body, settings, ANY, pin="b")
    fine = {"model": "local", "input": "x", "tools": [{"type": "function", "name": "f"}]}
    assert classify("/v1/responses", json.dumps(fine).encode(), settings, ANY).stream is False


FUNCTION = {"name": "f", "parameters": {"type": "object", "properties": {}}}
CALLED = {"name": "f", "arguments": "{}"}
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "param", "instead"),
    [
        ({"messages": [USER], "functions": [FUNCTION]}, "functions", "'tools'"),
        ({"messages": [USER], "function_call": "auto"}, "function_call", "'tool_choice'"),
        ({"messages": [USER], "function_call": {"name": "f"}}, "function_call", "'tool_choice'"),
        (
            {"messages": [USER, {"role": "function", "name": "f", "content": "1"}]},
            "messages[1].role",
            "role 'tool' with 'tool_call_id'",
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": None, "function_call": CALLED}]},
            "messages[1].function_call",
            "'tool_calls'",
        ),
    ],
)
@pytest.mark.parametrize("tier", [{}, {"service_tier": "flex"}, {"stream": True}])
def test_legacy_function_calling_is_refused(
    body: dict, param: str, instead: str, tier: dict
) -> None:
    with pytest.raises(APIError) as info:
        call("/v1/chat/completions", model="mock", **body, **tier)
    error = info.value
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)
    assert error.code == "legacy_function_calling"
    assert "deprecated and not supported" in error.message
    assert error.message.endswith(f"use {instead} instead.")


def test_tools_still_pass_and_null_legacy_fields_are_dropped() -> None:
    tools = [{"type": "function", "function": FUNCTION}]
    messages = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "function_call": None,  # as an SDK message's model_dump() has it
            "tool_calls": [{"id": "call_1", "type": "function", "function": CALLED}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
    ]
    result = call(
        "/v1/chat/completions",
        model="mock",
        messages=messages,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "f"}},
        functions=None,
        function_call=None,
        service_tier="flex",
    )
    assert result.tier == "flex"
    assert "functions" not in result.body and "function_call" not in result.body
    assert "function_call" not in result.body["messages"][1]
    assert result.body["messages"][1]["tool_calls"][0]["id"] == "call_1"
    assert result.body["tools"] == tools


def test_a_responses_call_to_a_chat_upstream_cannot_smuggle_functions() -> None:
    body = {"model": "local", "input": "x", "functions": [FUNCTION]}
    with pytest.raises(APIError) as info:
        classify("/v1/responses", json.dumps(body).encode(), chat_settings(), ANY)
    error = info.value
    assert (error.status, error.param, error.code) == (400, "functions", "legacy_function_calling")
