"""Chat's deprecated function calling (``functions``, ``function_call``, role ``function``)
is a 400 ``legacy_function_calling`` on every tier and in Batch API lines: the upstream never
sees it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.batches import chat_line, start_batch

CODE = "legacy_function_calling"
FUNCTION = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
TIERS = [pytest.param({}, id="realtime"), pytest.param({"service_tier": "flex"}, id="flex")]
TIMEOUT_S = 60.0


def attempts(mock_upstream: str, key: str) -> list[dict[str, Any]]:
    """What the mock upstream recorded under ``key`` (``mock:key=NAME`` in the text)."""
    return httpx.get(f"{mock_upstream}/_mock/attempts/{key}").json()["attempts"]


def chat_calls(mock_upstream: str) -> int:
    return int(httpx.get(f"{mock_upstream}/_mock/stats").json().get("/v1/chat/completions", 0))


def refused(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    error = info.value
    assert error.status_code == 400 and error.code == CODE
    assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error"
    assert "deprecated and not supported" in error.body["message"]
    return error


@pytest.mark.parametrize("tier", TIERS)
def test_functions_are_refused_and_never_sent(
    client: openai.OpenAI, mock_upstream: str, tier: dict[str, str]
) -> None:
    key = f"legacy-functions-{tier.get('service_tier', 'default')}"
    before = chat_calls(mock_upstream)
    error = refused(
        lambda: client.chat.completions.create(
            model="remote",
            messages=[{"role": "user", "content": f"mock:key={key} weather?"}],
            functions=[FUNCTION],
            function_call="auto",
            **tier,
        )
    )
    assert error.param == "functions" and "use 'tools' instead" in error.message
    error = refused(
        lambda: client.chat.completions.create(
            model="remote",
            messages=[{"role": "user", "content": f"mock:key={key} weather?"}],
            function_call={"name": "get_weather"},
            **tier,
        )
    )
    assert error.param == "function_call" and "use 'tool_choice' instead" in error.message
    assert attempts(mock_upstream, key) == []
    assert chat_calls(mock_upstream) == before


@pytest.mark.parametrize("tier", TIERS)
def test_legacy_messages_are_refused_and_never_sent(
    client: openai.OpenAI, mock_upstream: str, tier: dict[str, str]
) -> None:
    key = f"legacy-messages-{tier.get('service_tier', 'default')}"
    user = {"role": "user", "content": f"mock:key={key} weather?"}
    called = {"name": "get_weather", "arguments": "{}"}
    before = chat_calls(mock_upstream)
    error = refused(
        lambda: client.chat.completions.create(
            model="remote",
            messages=[user, {"role": "function", "name": "get_weather", "content": "sunny"}],
            **tier,
        )
    )
    assert error.param == "messages[1].role"
    assert "use role 'tool' with 'tool_call_id' instead" in error.message
    error = refused(
        lambda: client.chat.completions.create(
            model="remote",
            messages=[user, {"role": "assistant", "content": None, "function_call": called}],
            **tier,
        )
    )
    assert error.param == "messages[1].function_call"
    assert "use 'tool_calls' instead" in error.message
    assert attempts(mock_upstream, key) == []
    assert chat_calls(mock_upstream) == before


def test_tools_pass_and_null_legacy_fields_are_not_forwarded(
    client: openai.OpenAI, mock_upstream: str
) -> None:
    key = "legacy-tools-ok"
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    completion = client.chat.completions.create(
        model="remote",
        messages=[
            {"role": "user", "content": f"mock:key={key} weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=[{"type": "function", "function": FUNCTION}],
        tool_choice="auto",
        extra_body={"functions": None, "function_call": None},
    )
    assert completion.choices[0].message.content
    (attempt,) = attempts(mock_upstream, key)
    sent = attempt["body"]
    assert "functions" not in sent and "function_call" not in sent
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][2]["role"] == "tool"


def test_a_batch_line_with_functions_fails_the_batch(client: openai.OpenAI) -> None:
    bad = chat_line("bad", "weather?")
    bad["body"]["functions"] = [FUNCTION]
    batch = start_batch(client, [chat_line("good", "hi"), bad])
    deadline = time.monotonic() + TIMEOUT_S
    while (batch := client.batches.retrieve(batch.id)).status == "validating":
        assert time.monotonic() < deadline, "the batch is still validating"
        time.sleep(0.1)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == [(CODE, 2, "body.functions")]
