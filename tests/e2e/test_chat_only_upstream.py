"""The Responses API on upstreams that only speak chat completions (``api: chat``).

Real processes: the gateway (with its worker) and two mock providers that have no
``/v1/responses`` (``--api chat``, and ``--api legacy`` which also refuses
``max_completion_tokens``); the official SDK as the client. The mock records the chat body
it received (``/_mock/attempts/{key}``), which shows what the translation sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from app.testing.config import write_config
from app.testing.processes import Gateway, start_mock_upstream
from tests.e2e.conftest import row
from tests.support.batches import jsonl, responses_line, start_batch, upload

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "the weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "strict": True,
}
POLL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("chat-mocks")
    started = {api: start_mock_upstream(logs / f"{api}.log", api=api) for api in ("chat", "legacy")}
    yield {api: url for api, (url, _) in started.items()}
    for _, process in started.values():
        process.stop()


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mocks: dict[str, str]) -> Path:
    chat, legacy = mocks["chat"] + "/v1", mocks["legacy"] + "/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {"name": "llama", "upstream": chat, "upstream_model": "smollm2", "api": "chat"},
            {
                "name": "llama-new",
                "upstream": chat,
                "api": "chat",
                "max_tokens_field": "max_completion_tokens",
            },
            {"name": "legacy", "upstream": legacy, "api": "chat"},
            {"name": "legacy-raw", "upstream": legacy},  # api: responses, nothing renamed
        ],
    )


def received(mocks: dict[str, str], key: str, api: str = "chat") -> list[dict[str, Any]]:
    """What the mock provider received for requests carrying ``key=NAME``."""
    attempts = httpx.get(f"{mocks[api]}/_mock/attempts/{key}").json()["attempts"]
    return attempts


def only_body(mocks: dict[str, str], key: str, api: str = "chat") -> dict[str, Any]:
    (attempt,) = received(mocks, key, api)
    assert attempt["path"] == "/v1/chat/completions"  # never /v1/responses
    return attempt["body"]


def validated(raw: Any) -> Response:
    """The Response in a raw SDK answer, checked against the SDK's type (fields required)."""
    return Response.model_validate(json.loads(raw.text))


def test_string_input_realtime(client: openai.OpenAI, mocks, db: psycopg.Connection):
    raw = client.responses.with_raw_response.create(
        model="llama", input="mock:key=rt-1 hello there", temperature=0.3, top_p=0.5
    )
    response = validated(raw)
    assert response.output_text == "echo: mock:key=rt-1 hello there"
    assert response.model == "llama"  # what the client asked for, not the upstream's name
    assert response.id == raw.headers["x-request-id"]
    assert response.output[0].id.startswith("msg_")
    assert response.usage is not None and response.usage.input_tokens == 3
    sent = only_body(mocks, "rt-1")
    assert sent["model"] == "smollm2"
    assert sent["messages"] == [{"role": "user", "content": "mock:key=rt-1 hello there"}]
    assert (sent["temperature"], sent["top_p"]) == (0.3, 0.5)
    assert "input" not in sent and "stream" not in sent
    tracked = row(db, response.id)
    assert tracked["status"] == "completed" and tracked["input_tokens"] == 3
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_items_and_instructions(client: openai.OpenAI, mocks):
    raw = client.responses.with_raw_response.create(
        model="llama",
        instructions="be brief",
        input=[
            {"role": "developer", "content": "house rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"role": "assistant", "content": "earlier answer"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "mock:key=items-1 second"}],
            },
        ],
    )
    assert validated(raw).output_text == "echo: mock:key=items-1 second"
    assert only_body(mocks, "items-1")["messages"] == [
        {"role": "system", "content": "be brief\n\nhouse rules"},  # one system message
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "mock:key=items-1 second"},
    ]


def test_function_tools_round_trip(client: openai.OpenAI, mocks):
    question = {"role": "user", "content": "mock:key=tools-1 weather in Paris?"}
    first = validated(
        client.responses.with_raw_response.create(
            model="llama", input=[question], tools=[WEATHER], tool_choice="auto"
        )
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "weather"
    assert json.loads(call.arguments) == {"text": question["content"]}
    sent = only_body(mocks, "tools-1")
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": WEATHER["description"],
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert sent["tool_choice"] == "auto"
    second = validated(
        client.responses.with_raw_response.create(
            model="llama",
            tools=[WEATHER],
            input=[
                question,
                call.model_dump(exclude_none=True),
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
            ],
        )
    )
    assert second.output_text == "tool said: sunny"
    messages = received(mocks, "tools-1")[1]["body"]["messages"]
    assert messages[1]["role"] == "assistant"
    assert messages[1]["tool_calls"] == [
        {
            "id": call.call_id,
            "type": "function",
            "function": {"name": "weather", "arguments": call.arguments},
        }
    ]
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


class Echo(BaseModel):
    echo: str


def test_json_schema_text_format(client: openai.OpenAI, mocks):
    parsed = client.responses.parse(
        model="llama", input="mock:key=json-1 structured", text_format=Echo
    )
    assert parsed.output_parsed == Echo(echo="mock:key=json-1 structured")
    fmt = only_body(mocks, "json-1")["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Echo"
    assert fmt["json_schema"]["schema"]["properties"] == {
        "echo": {"title": "Echo", "type": "string"}
    }


def test_stream_through_the_sdk_helper(client: openai.OpenAI, mocks, db: psycopg.Connection):
    with client.responses.stream(model="llama", input="mock:key=stream-1 one two") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "echo: mock:key=stream-1 one two"
    Response.model_validate(final.model_dump(mode="json", exclude_unset=True))
    assert final.usage is not None
    assert final.usage.output_tokens == len(final.output_text.split())  # the mock counts words
    sent = only_body(mocks, "stream-1")
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    # The stream was recorded under the id the SDK saw.
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_raw_stream_events_are_valid_and_numbered(
    client: openai.OpenAI, mocks, db: psycopg.Connection
):
    with client.responses.with_streaming_response.create(
        model="llama", input="mock:key=stream-2 raw events", stream=True, tools=[WEATHER]
    ) as raw:
        rid = raw.headers["x-request-id"]
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in raw.iter_lines() if line.startswith("data:")]
    parsed = [EVENTS.validate_python(event) for event in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = parsed[-1].response
    (call,) = final.output
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"text": "mock:key=stream-2 raw events"}
    tracked = row(db, rid)
    assert tracked["status"] == "completed"
    assert tracked["total_tokens"] == events[-1]["response"]["usage"]["total_tokens"]


def test_flex(client: openai.OpenAI, mocks):
    raw = client.responses.with_raw_response.create(
        model="llama", input="mock:key=flex-1 cheap", service_tier="flex"
    )
    response = validated(raw)
    assert response.output_text == "echo: mock:key=flex-1 cheap"
    assert response.service_tier == "flex" and response.model == "llama"
    assert response.id == raw.headers["x-request-id"]
    assert "service_tier" not in only_body(mocks, "flex-1")


def test_background_is_polled_to_completion(client: openai.OpenAI, mocks, gateway: Gateway, key):
    created = client.responses.create(
        model="llama", input="mock:key=bg-1 later", background=True, tools=[WEATHER]
    )
    assert created.status == "queued"
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (found := client.responses.retrieve(created.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, "the background response never finished"
        time.sleep(0.05)
    assert found.status == "completed"
    raw = httpx.get(
        f"{gateway.api}/responses/{created.id}", headers={"authorization": f"Bearer {key}"}
    )
    response = Response.model_validate(raw.json())
    (call,) = response.output
    assert call.type == "function_call" and call.name == "weather"
    assert response.background is True and response.model == "llama"
    assert "background" not in only_body(mocks, "bg-1")


def test_batch_lines(client: openai.OpenAI, mocks):
    lines = [responses_line(f"line-{i}", f"mock:key=batch-{i} line {i}", "llama") for i in range(5)]
    batch = start_batch(client, lines)
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 0)
    assert batch.output_file_id is not None
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).read().splitlines()]
    for line in output:
        response = Response.model_validate(line["response"]["body"])
        i = line["custom_id"].removeprefix("line-")
        assert response.output_text == f"echo: mock:key=batch-{i} line {i}"
        assert only_body(mocks, f"batch-{i}")["messages"][-1]["content"].endswith(f"line {i}")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}],
                    }
                ]
            },
            "input[0].content[0].type",
        ),
    ],
)
@pytest.mark.parametrize("tier", ["default", "flex", "background"])
def test_unsupported_features_are_a_400_naming_them(
    client: openai.OpenAI, extra: dict[str, Any], param: str, tier: str
):
    tiers: dict[str, Any] = {
        "default": {},
        "flex": {"service_tier": "flex"},
        "background": {"background": True},
    }
    body = {"input": "mock:key=refused never sent", **extra, **tiers[tier]}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="llama", **body)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert param.split("[")[0] in error["message"]


def test_an_unsupported_batch_line_fails_naming_it(client: openai.OpenAI):
    good = responses_line("good", "fine", "llama")
    bad = responses_line("bad", "searching", "llama")
    bad["body"]["tools"] = [{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl([good, bad])),
        endpoint="/v1/responses",
        completion_window="24h",
    )
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    (error,) = batch.errors.data
    assert (error.line, error.param, error.code) == (
        2,
        "body.tools[0].type",
        "unsupported_parameter",
    )


def test_max_output_tokens_reaches_the_configured_field(client: openai.OpenAI, mocks):
    cut = validated(
        client.responses.with_raw_response.create(
            model="llama", input="mock:key=limit-1 a b c d e", max_output_tokens=2
        )
    )
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text == "echo: mock:key=limit-1"  # two words
    sent = only_body(mocks, "limit-1")
    assert sent["max_tokens"] == 2 and "max_completion_tokens" not in sent
    client.responses.create(model="llama-new", input="mock:key=limit-2 x", max_output_tokens=9)
    sent = only_body(mocks, "limit-2")
    assert sent["max_completion_tokens"] == 9 and "max_tokens" not in sent
    # A server that knows only max_tokens, through the Responses API ...
    legacy = client.responses.create(
        model="legacy", input="mock:key=limit-3 a b c", max_output_tokens=3
    )
    assert (
        legacy.status == "incomplete" and only_body(mocks, "limit-3", "legacy")["max_tokens"] == 3
    )


def test_a_clients_own_chat_token_limit_is_renamed(client: openai.OpenAI, mocks):
    messages = [{"role": "user", "content": "mock:key=chat-limit-1 a b c d"}]
    chat = client.chat.completions.create(
        model="legacy", messages=messages, max_completion_tokens=2
    )
    assert chat.choices[0].finish_reason == "length"
    sent = only_body(mocks, "chat-limit-1", "legacy")
    assert sent["max_tokens"] == 2 and "max_completion_tokens" not in sent
    # Without the mapping that server refuses the field (what the setting is for).
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="legacy-raw",
            messages=[{"role": "user", "content": "mock:key=chat-limit-2 x"}],
            max_completion_tokens=2,
        )
    assert "max_completion_tokens" in str(caught.value)


def test_without_api_chat_the_server_404s_in_openais_shape(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="legacy-raw", input="no such route")
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == "Not Found"


def test_conversation_by_id_with_a_tool_call(client: openai.OpenAI, mocks):
    first = client.responses.create(
        model="llama", input="mock:key=conv-1 weather in Oslo?", tools=[WEATHER]
    )
    (call,) = first.output
    assert call.type == "function_call"
    second = client.responses.create(
        model="llama",
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "snow"}],
    )
    assert second.output_text == "tool said: snow"
    messages = received(mocks, "conv-1")[1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert "previous_response_id" not in received(mocks, "conv-1")[1]["body"]
    third = client.responses.create(
        model="llama", previous_response_id=second.id, input="mock:key=conv-2 thanks"
    )
    assert third.output_text == "echo: mock:key=conv-2 thanks"
    roles = [m["role"] for m in only_body(mocks, "conv-2")["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]


def test_a_history_chat_cannot_take_is_refused_at_acceptance(client: openai.OpenAI, db):
    first = client.responses.create(model="llama", input="mock:key=conv-3 hi")
    # A history item chat cannot express (as a Responses upstream's built-in tool call).
    db.execute(
        "UPDATE requests SET body = jsonb_set(body, '{input}', jsonb_build_array("
        "jsonb_build_object('type', 'web_search_call', 'id', 'ws_1', 'status', 'completed')))"
        " WHERE id = %s",
        (first.id,),
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="llama", previous_response_id=first.id, input="more")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "input[0].type"


def test_flex_stream(client: openai.OpenAI, mocks):
    stream = client.responses.create(
        model="llama", input="mock:key=flex-stream-1 later", service_tier="flex", stream=True
    )
    events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    final = Response.model_validate(events[-1].response.model_dump(mode="json", exclude_unset=True))
    assert final.output_text == "echo: mock:key=flex-stream-1 later"
    assert final.service_tier == "flex"
    assert only_body(mocks, "flex-stream-1")["messages"][-1]["role"] == "user"
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_background_stream(client: openai.OpenAI, mocks):
    """A background stream on a chat-only model: the worker streams a chat call, translated
    to Responses events as they come, and stores them; a resume reads the same events."""
    stream = client.responses.create(
        model="llama", input="mock:key=bg-stream-1 in the background", background=True, stream=True
    )
    events = [EVENTS.validate_python(e.model_dump()) for e in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    final = events[-1].response
    assert final.output_text == "echo: mock:key=bg-stream-1 in the background"
    assert only_body(mocks, "bg-stream-1")["stream"] is True
    resumed = [
        EVENTS.validate_python(e.model_dump())
        for e in client.responses.retrieve(final.id, stream=True, starting_after=2)
    ]
    assert [e.model_dump() for e in resumed] == [e.model_dump() for e in events[3:]]
