"""Responses <-> chat translation for chat-only upstreams (app/openai/translate.py).

Answers and events are checked with the official SDK's types, so a missing field fails.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.mock.payloads import chat_only_payload, chat_only_sse, chat_text
from app.openai.translate import (
    StreamTranslator,
    Untranslatable,
    chat_events,
    chat_request,
    rename_token_limit,
    response_from_chat,
    sse,
)

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


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


def test_token_limit_renamed_for_the_deployment():
    assert rename_token_limit({"max_completion_tokens": 5}, "max_tokens") == {"max_tokens": 5}
    assert rename_token_limit({"max_tokens": 5}, "max_completion_tokens") == {
        "max_completion_tokens": 5
    }
    same = {"max_tokens": 5}
    assert rename_token_limit(same, "max_tokens") is same  # nothing to do, no copy


def _request(**extra: Any) -> dict[str, Any]:
    return {"model": "asked-name", "input": "mock:key=x hi there", **extra}


def _mock_chat(request: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
    chat = {**chat_request(request), "model": "upstream-name"}
    return chat_only_payload(chat, chat_text(chat), legacy)


def test_a_text_answer_is_a_valid_response():
    request = _request(instructions="be brief", metadata={"k": "v"})
    obj = response_from_chat(request, _mock_chat(request))
    response = Response.model_validate(obj)
    assert response.output_text == "echo: mock:key=x hi there"
    assert response.model == "asked-name" and response.status == "completed"
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")
    assert obj["output"][0]["content"][0]["annotations"] == []
    assert obj["output"][0]["content"][0]["logprobs"] == []
    assert response.instructions == "be brief" and response.metadata == {"k": "v"}
    assert response.usage is not None
    words = (len(request["input"].split()), len(response.output_text.split()))
    assert (response.usage.input_tokens, response.usage.output_tokens) == words  # mock: words


def test_usage_details_and_length_map():
    chat = {
        "created": 5,
        "choices": [{"message": {"content": "a b"}, "finish_reason": "length"}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }
    response = Response.model_validate(response_from_chat(_request(), chat))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 1
    assert response.created_at == 5


def test_tool_calls_and_refusal():
    request = _request(tools=[WEATHER])
    response = Response.model_validate(response_from_chat(request, _mock_chat(request)))
    (call,) = response.output
    assert call.type == "function_call"
    assert call.name == "weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"text": "mock:key=x hi there"}
    assert call.id is not None and call.id.startswith("fc_")
    refusal = {"choices": [{"message": {"content": None, "refusal": "no"}}]}
    refused = Response.model_validate(response_from_chat(_request(), refusal))
    assert refused.output[0].type == "message"
    assert refused.output[0].content[0].type == "refusal"


def _stream(request: dict[str, Any], legacy: bool = False) -> list[dict[str, Any]]:
    """Translate the mock's chat stream for ``request``, frame by frame as it would arrive."""
    chat = {**chat_request(request), "model": "upstream-name"}
    translator = StreamTranslator(request)
    out = translator.start()
    for frame in chat_only_sse(chat, chat_text(chat), legacy):
        for chunk in chat_events(frame):
            out += translator.finish() if chunk is None else translator.feed(chunk)
    return out


def test_a_text_stream_gives_the_documented_event_sequence():
    events = _stream(_request(stream=True))
    parsed = [EVENTS.validate_python(e) for e in events]
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "echo: mock:key=x hi there"
    final = parsed[-1].response
    assert final.output_text == text and final.status == "completed"
    assert final.usage is not None  # from the chunk include_usage asks for
    assert final.usage.output_tokens == len(text.split())
    assert final.id == parsed[0].response.id


def test_a_tool_call_stream():
    events = _stream(_request(stream=True, tools=[WEATHER]))
    for event in events:
        EVENTS.validate_python(event)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.done" in kinds
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    final = Response.model_validate(events[-1]["response"])
    (call,) = final.output
    assert call.type == "function_call" and call.arguments == "".join(deltas)
    assert json.loads(call.arguments) == {"text": "mock:key=x hi there"}
    assert kinds[-1] == "response.completed"


def test_a_cut_stream_is_incomplete_and_sse_frames_are_whole():
    events = _stream(_request(stream=True, max_output_tokens=2))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    frames = sse(events).split(b"\n\n")
    assert frames[-1] == b"" and len(frames) == len(events) + 1
    assert frames[0].startswith(b"event: response.created\ndata: {")


def test_an_error_chunk_fails_the_response():
    translator = StreamTranslator(_request())
    translator.start()
    (failed,) = translator.fail("boom")
    event = EVENTS.validate_python(failed)
    assert event.type == "response.failed" and event.response.error is not None
    assert translator.finish() == []


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


def test_reasoning_content_streams_as_a_reasoning_item_first():
    translator = StreamTranslator(_request())
    events = translator.start()
    for delta in (
        {"reasoning_content": "think "},
        {"reasoning_content": "more"},
        {"content": "ok"},
    ):
        events += translator.feed({"choices": [{"index": 0, "delta": delta}]})
    events += translator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events += translator.finish()
    for event in events:
        EVENTS.validate_python(event)
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "ok"
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "think more"
    kinds = [e["type"] for e in events]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    whole = {"choices": [{"message": {"content": "ok", "reasoning_content": "hm"}}]}
    assert [i["type"] for i in response_from_chat(_request(), whole)["output"]] == [
        "reasoning",
        "message",
    ]


def test_tgi_style_tool_calls_an_object_with_object_arguments():
    chat = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": {
                        "id": "c9",
                        "type": "function",
                        "function": {"name": "weather", "arguments": {"city": "Paris"}},
                    },
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    response = Response.model_validate(response_from_chat(_request(), chat))
    (call,) = response.output
    assert call.type == "function_call" and call.call_id == "c9"
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_nulls_and_a_tool_choice_without_tools_are_left_out():
    chat = chat_request(
        {"model": "m", "input": "x", "temperature": None, "tool_choice": "auto", "top_k": None}
    )
    assert not {"temperature", "tool_choice", "top_k"} & set(chat)
    forced = chat_request({"model": "m", "input": "x", "tool_choice": "required"})
    assert forced["tool_choice"] == "required"  # the server says what it thinks of that


def test_text_then_refusal_parts_keep_their_own_text():
    translator = StreamTranslator(_request())
    events = translator.start()
    for delta in ({"content": "a"}, {"content": "b"}, {"refusal": "no"}, {"refusal": "pe"}):
        events += translator.feed({"choices": [{"index": 0, "delta": delta}]})
    events += translator.finish()
    for event in events:
        EVENTS.validate_python(event)
    (message,) = events[-1]["response"]["output"]
    assert message["content"] == [
        {"type": "output_text", "text": "ab", "annotations": [], "logprobs": []},
        {"type": "refusal", "refusal": "nope"},
    ]
    done = [
        e for e in events if e["type"] in ("response.output_text.done", "response.refusal.done")
    ]
    assert [e.get("text", e.get("refusal")) for e in done] == ["ab", "nope"]


def test_previous_response_id_is_tiergates_own():
    # Resolved into the input by the gateway (the upstream never sees it); before that, at
    # acceptance, a body may have no input of its own.
    chat = chat_request({"model": "m", "previous_response_id": "resp_1", "instructions": "i"})
    assert chat["messages"] == [{"role": "system", "content": "i"}]
    assert "previous_response_id" not in chat
    echoed = response_from_chat(
        {"model": "m", "input": "x", "previous_response_id": "resp_1"},
        {"choices": [{"message": {"content": "ok"}}]},
    )
    assert echoed["previous_response_id"] == "resp_1"
