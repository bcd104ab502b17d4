"""Relayed streams: ids spliced, the final event found, the object rebuilt; and the replay of
a stored object as a stream (its inverse)."""

from __future__ import annotations

import json
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.mock.payloads import chat_payload, chat_sse, responses_payload, responses_sse
from app.openai.assembly import chat_completion
from app.openai.replay import chat_chunks, response_events
from app.openai.sse import ChatRelay, ResponsesRelay, event_data

EVENT = TypeAdapter(ResponseStreamEvent)
HEAD = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


def _choice(index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None, **extra}


def test_tool_call_deltas_merge_by_index_and_choices_stay_apart():
    chunks = [
        {**HEAD, "choices": [_choice(0, {"role": "assistant", "content": None})]},
        {
            **HEAD,
            "choices": [
                _choice(
                    0,
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"ci'},
                            }
                        ]
                    },
                )
            ],
        },
        {
            **HEAD,
            "choices": [
                _choice(
                    0,
                    {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "call_b",
                                "function": {"name": "now", "arguments": ""},
                            },
                            {"index": 0, "function": {"arguments": 'ty":"Paris"}'}},
                        ]
                    },
                )
            ],
        },
        {**HEAD, "choices": [_choice(1, {"role": "assistant", "refusal": "I can't"})]},
        {**HEAD, "choices": [_choice(1, {"refusal": " do that."}, finish_reason="stop")]},
        {**HEAD, "choices": [_choice(0, {}, finish_reason="tool_calls")]},
        {
            **HEAD,
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
        },
    ]
    relay = ChatRelay("chatcmpl-ours", strip_usage=True)
    sent = relay.feed(_sse(chunks) + b"data: [DONE]\n\n")
    assert relay.done and b'"usage": {' not in sent and b"chatcmpl-up" not in sent
    body = relay.result()
    completion = ChatCompletion.model_validate(body)
    assert completion.id == "chatcmpl-ours"
    first, second = completion.choices
    assert first.finish_reason == "tool_calls" and first.message.content is None
    calls = first.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "now", ""),
    ]
    assert second.message.refusal == "I can't do that." and second.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 12


def test_logprobs_are_concatenated():
    token = {"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}
    chunks = [
        {**HEAD, "choices": [_choice(0, {"content": "hi"}, logprobs={"content": [token]})]},
        {**HEAD, "choices": [_choice(0, {"content": "hi"}, logprobs={"content": [token]})]},
        {**HEAD, "choices": [_choice(0, {}, finish_reason="length")]},
    ]
    completion = ChatCompletion.model_validate(
        chat_completion([json.dumps(c).encode() for c in chunks])
    )
    choice = completion.choices[0]
    assert choice.message.content == "hihi" and choice.finish_reason == "length"
    assert choice.logprobs is not None and len(choice.logprobs.content or []) == 2


def test_events_split_anywhere_still_assemble():
    frames = b"".join(chat_sse("m", "one two three", include_usage=True))
    relay = ChatRelay("chatcmpl-x", strip_usage=False)
    sent = b""
    # Whole events in blocks of various sizes, as the relay hands them over.
    events = [e + b"\n\n" for e in frames.split(b"\n\n") if e]
    for start in range(0, len(events), 3):
        sent += relay.feed(b"".join(events[start : start + 3]))
    assert sent.count(b"chatcmpl-x") == len(events) - 1  # every chunk but [DONE]
    body = relay.result()
    assert body is not None and body["choices"][0]["message"]["content"] == "echo: one two three"
    assert body["usage"]["total_tokens"] == 7


def test_an_error_chunk_is_an_error():
    relay = ChatRelay("chatcmpl-x", strip_usage=False)
    relay.feed(b'data: {"error": {"message": "boom", "code": "server_error"}}\n\n')
    assert relay.error == {"message": "boom", "code": "server_error"}


def test_responses_relay_splices_the_response_id_and_keeps_the_final_object():
    relay = ResponsesRelay("resp_ours", previous="resp_before")
    sent = b"".join(relay.feed(frame) for frame in responses_sse("m", "a b"))
    assert relay.done and b"resp_mock" not in sent
    final = Response.model_validate(relay.result())
    assert final.id == "resp_ours" and final.output_text == "echo: a b"
    for event in sent.split(b"\n\n"):
        data = event_data(event)
        if data:
            parsed = EVENT.validate_json(data)
            if hasattr(parsed, "response"):
                assert parsed.response.previous_response_id == "resp_before"  # type: ignore[union-attr]


def test_replayed_response_events_validate_and_rebuild_the_text():
    response = responses_payload("m", "replayed words here")
    frames = list(response_events(response))
    events = [EVENT.validate_json(event_data(f.rstrip(b"\n")) or b"") for f in frames]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == Response.model_validate(response).output_text


def test_replayed_chat_chunks_assemble_back_to_the_completion():
    completion = chat_payload("m", "round trip")
    frames = b"".join(chat_chunks(completion, include_usage=True))
    for event in frames.split(b"\n\n"):
        data = event_data(event)
        if data and data != b"[DONE]":
            ChatCompletionChunk.model_validate_json(data)
    relay = ChatRelay(completion["id"], strip_usage=False)
    relay.feed(frames)
    rebuilt = relay.result()
    assert relay.done and rebuilt is not None
    assert rebuilt["choices"][0]["message"] == completion["choices"][0]["message"]
    assert rebuilt["usage"] == completion["usage"]
