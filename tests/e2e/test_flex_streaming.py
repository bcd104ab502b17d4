"""Streaming on the flex tier: accepted durably, keep-alive comments while it waits, then the
stored result replayed as a normal SSE stream that the SDK reads."""

from __future__ import annotations

import json

import httpx
import openai
import psycopg
import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from app.testing.processes import Gateway
from tests.e2e.conftest import row

EVENT = TypeAdapter(ResponseStreamEvent)


def test_chat_flex_stream_with_the_sdk(client: openai.OpenAI, db: psycopg.Connection):
    """What LangChain's ``ChatOpenAI(service_tier="flex").stream(...)`` sends."""
    stream = client.chat.completions.create(
        model="remote",
        messages=[{"role": "user", "content": "flex stream words"}],
        service_tier="flex",
        stream=True,
    )
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) for c in stream]
    rid = stream.response.headers["x-request-id"]
    assert {c.id for c in chunks} == {rid}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: flex stream words"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.service_tier == "flex" for c in chunks)
    tracked = row(db, rid)
    assert (tracked["status"], tracked["service_tier"]) == ("completed", "flex")


def test_chat_flex_stream_sends_usage_when_asked(client: openai.OpenAI):
    chunks = list(
        client.chat.completions.create(
            model="remote",
            messages=[{"role": "user", "content": "usage please"}],
            service_tier="flex",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 5


def test_responses_flex_stream_events_validate(client: openai.OpenAI):
    stream = client.responses.create(
        model="remote", input="flex responses stream", service_tier="flex", stream=True
    )
    events = [EVENT.validate_python(e.model_dump()) for e in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.id == stream.response.headers["x-request-id"] and final.service_tier == "flex"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "echo: flex responses stream"
    assert client.responses.retrieve(final.id).output_text == deltas


def test_sdk_stream_helper_on_flex(client: openai.OpenAI):
    with client.responses.stream(
        model="remote", input="helper on flex", service_tier="flex"
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == "echo: helper on flex" and final.status == "completed"


def test_keep_alive_comments_while_the_call_waits(gateway: Gateway, key: str):
    """The upstream takes 1.5 s; keep-alives (every 0.3 s here) come before the first event."""
    body = {
        "model": "remote",
        "messages": [{"role": "user", "content": "mock:sleep_ms=1500 slow one"}],
        "service_tier": "flex",
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", gateway.api + "/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 2 and set(lines[:first_data]) == {": keep-alive"}
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        json.loads(line[5:])["choices"][0]["delta"].get("content") or ""
        for line in lines[first_data:-1]
    )
    assert text == "echo: mock:sleep_ms=1500 slow one"


def test_a_failed_flex_stream_fails_in_band(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="remote",
        messages=[{"role": "user", "content": "mock:status=400 refused"}],
        service_tier="flex",
        stream=True,
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_400"
    events = list(
        client.responses.create(
            model="remote", input="mock:status=400 refused", service_tier="flex", stream=True
        )
    )
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None  # type: ignore[union-attr]
