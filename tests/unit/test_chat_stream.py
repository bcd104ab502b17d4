"""Chat streams as Responses stream events for chat-only upstreams (app/openai/chat_stream.py).

Events are checked with the official SDK's types, so a missing field fails.
"""

from __future__ import annotations

import json
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.mock.payloads import chat_only_sse, chat_text
from app.openai.chat_request import chat_request
from app.openai.chat_stream import StreamTranslator, chat_events, sse
from tests.support.chat_only import WEATHER, responses_request

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


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
    events = _stream(responses_request(stream=True))
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
    events = _stream(responses_request(stream=True, tools=[WEATHER]))
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
    events = _stream(responses_request(stream=True, max_output_tokens=2))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    frames = sse(events).split(b"\n\n")
    assert frames[-1] == b"" and len(frames) == len(events) + 1
    assert frames[0].startswith(b"event: response.created\ndata: {")


def test_an_error_chunk_fails_the_response():
    translator = StreamTranslator(responses_request())
    translator.start()
    (failed,) = translator.fail("boom")
    event = EVENTS.validate_python(failed)
    assert event.type == "response.failed" and event.response.error is not None
    assert translator.finish() == []


def test_reasoning_content_streams_as_a_reasoning_item_first():
    translator = StreamTranslator(responses_request())
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


def test_text_then_refusal_parts_keep_their_own_text():
    translator = StreamTranslator(responses_request())
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
