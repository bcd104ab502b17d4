"""Responses requests as chat requests for chat-only upstreams (app/openai/chat_request.py)."""

from __future__ import annotations

from typing import Any

import pytest

from app.openai.chat_request import Untranslatable, chat_request, rename_token_limit
from tests.support.chat_only import WEATHER


def test_string_input_and_instructions_become_system_then_user():
    chat = chat_request({"model": "m", "input": "hi", "instructions": "be brief"})
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert chat["model"] == "m"


def test_items_roles_parts_and_a_function_call_round_trip():
    body = {
        "model": "m",
        "input": [
            {"role": "developer", "content": "dev note"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                ],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},  # not sent back
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        ],
    }
    messages = chat_request({**body, "instructions": "rules"})["messages"]
    assert messages[0] == {"role": "system", "content": "rules\n\ndev note"}  # one system turn
    assert messages[1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
    ]
    # The assistant's text and both parallel calls are one turn.
    assert messages[2]["role"] == "assistant" and messages[2]["content"] == "calling"
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "weather", "arguments": "{}"}
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]


def test_a_call_without_assistant_text_opens_its_own_turn():
    messages = chat_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "q"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            ],
        }
    )["messages"]
    assert messages[1]["role"] == "assistant" and messages[1]["content"] is None


def test_a_later_system_message_stays_in_place():
    messages = chat_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "a"},
                {"role": "developer", "content": "b"},
            ],
        }
    )["messages"]
    assert [m["role"] for m in messages] == ["user", "system"]


def test_settings_tools_formats_and_limits():
    body = {
        "model": "m",
        "input": "x",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "max_output_tokens": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "metadata": {"a": "b"},
        "store": True,
        "service_tier": "flex",
        "reasoning": {"effort": "low"},
        "stream": True,
        "top_k": 5,  # a server's own extension passes through
    }
    chat = chat_request(body, "max_completion_tokens")
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "the weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    assert chat["max_completion_tokens"] == 7 and "max_tokens" not in chat
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["reasoning_effort"] == "low"
    assert (chat["temperature"], chat["top_p"], chat["user"], chat["top_k"]) == (0.2, 0.9, "u1", 5)
    assert chat["parallel_tool_calls"] is False
    for kept in ("metadata", "store", "service_tier", "input", "text", "max_output_tokens"):
        assert kept not in chat
    assert chat_request({"model": "m", "input": "x", "max_output_tokens": 3})["max_tokens"] == 3
    json_object = {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    assert chat_request(json_object)["response_format"] == {"type": "json_object"}
    # chat servers refuse parallel_tool_calls without tools
    assert "parallel_tool_calls" not in chat_request(
        {"model": "m", "input": "x", "parallel_tool_calls": True}
    )


def test_nulls_and_a_tool_choice_without_tools_are_left_out():
    chat = chat_request(
        {"model": "m", "input": "x", "temperature": None, "tool_choice": "auto", "top_k": None}
    )
    assert not {"temperature", "tool_choice", "top_k"} & set(chat)
    forced = chat_request({"model": "m", "input": "x", "tool_choice": "required"})
    assert forced["tool_choice"] == "required"  # the server says what it thinks of that


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": []}]}, "tools[1].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input[0].type"),
        ({"input": [{"role": "critic", "content": "x"}]}, "input[0].role"),
    ],
)
def test_what_chat_cannot_express_is_refused_naming_it(extra: dict[str, Any], param: str):
    with pytest.raises(Untranslatable) as caught:
        chat_request({"model": "m", "input": "x", **extra})
    assert caught.value.param == param
    assert param.split("[")[0].split(".")[0] in caught.value.message


@pytest.mark.parametrize(
    ("extra", "instead"),
    [
        ({"functions": [{"name": "weather", "parameters": {}}]}, "'tools'"),
        ({"function_call": "auto"}, "'tool_choice'"),
    ],
)
def test_legacy_function_calling_is_not_passed_through(extra: dict[str, Any], instead: str):
    with pytest.raises(Untranslatable) as caught:
        chat_request({"model": "m", "input": "x", **extra})
    (param,) = extra
    assert (caught.value.param, caught.value.code) == (param, "legacy_function_calling")
    assert caught.value.message.endswith(f"use {instead} instead.")
    chat = chat_request({"model": "m", "input": "x", param: None})
    assert param not in chat


def test_neutral_values_are_accepted():
    chat = chat_request(
        {"model": "m", "input": "x", "include": [], "truncation": "disabled", "top_logprobs": 0}
    )
    assert "include" not in chat and "truncation" not in chat


def test_previous_response_id_is_tiergates_own():
    # Resolved into the input by the gateway (the upstream never sees it); before that, at
    # acceptance, a body may have no input of its own.
    chat = chat_request({"model": "m", "previous_response_id": "resp_1", "instructions": "i"})
    assert chat["messages"] == [{"role": "system", "content": "i"}]
    assert "previous_response_id" not in chat


def test_token_limit_renamed_for_the_deployment():
    assert rename_token_limit({"max_completion_tokens": 5}, "max_tokens") == {"max_tokens": 5}
    assert rename_token_limit({"max_tokens": 5}, "max_completion_tokens") == {
        "max_completion_tokens": 5
    }
    same = {"max_tokens": 5}
    assert rename_token_limit(same, "max_tokens") is same  # nothing to do, no copy
