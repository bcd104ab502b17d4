"""Chat completions as Response objects for chat-only upstreams (app/openai/chat_answer.py).

Answers are checked with the official SDK's types, so a missing field fails.
"""

from __future__ import annotations

import json
from typing import Any

from openai.types.responses import Response

from app.mock.payloads import chat_only_payload, chat_text
from app.openai.chat_answer import response_from_chat
from app.openai.chat_request import chat_request
from tests.support.chat_only import WEATHER, responses_request


def _mock_chat(request: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
    chat = {**chat_request(request), "model": "upstream-name"}
    return chat_only_payload(chat, chat_text(chat), legacy)


def test_a_text_answer_is_a_valid_response():
    request = responses_request(instructions="be brief", metadata={"k": "v"})
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
    response = Response.model_validate(response_from_chat(responses_request(), chat))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 1
    assert response.created_at == 5


def test_tool_calls_and_refusal():
    request = responses_request(tools=[WEATHER])
    response = Response.model_validate(response_from_chat(request, _mock_chat(request)))
    (call,) = response.output
    assert call.type == "function_call"
    assert call.name == "weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"text": "mock:key=x hi there"}
    assert call.id is not None and call.id.startswith("fc_")
    refusal = {"choices": [{"message": {"content": None, "refusal": "no"}}]}
    refused = Response.model_validate(response_from_chat(responses_request(), refusal))
    assert refused.output[0].type == "message"
    assert refused.output[0].content[0].type == "refusal"


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
    response = Response.model_validate(response_from_chat(responses_request(), chat))
    (call,) = response.output
    assert call.type == "function_call" and call.call_id == "c9"
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_reasoning_content_comes_first_as_a_reasoning_item():
    whole = {"choices": [{"message": {"content": "ok", "reasoning_content": "hm"}}]}
    assert [i["type"] for i in response_from_chat(responses_request(), whole)["output"]] == [
        "reasoning",
        "message",
    ]


def test_previous_response_id_is_echoed():
    echoed = response_from_chat(
        {"model": "m", "input": "x", "previous_response_id": "resp_1"},
        {"choices": [{"message": {"content": "ok"}}]},
    )
    assert echoed["previous_response_id"] == "resp_1"
