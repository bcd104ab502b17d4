"""Realtime streams are recorded: the row holds the object the stream built, under the id the
client saw in the stream, and a stream whose final event reached the client is completed."""

from __future__ import annotations

import json

import httpx
import openai
import psycopg
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from app.testing.processes import Gateway
from tests.e2e.conftest import row
from tests.support.waiting import wait_until


def _finished(db: psycopg.Connection, rid: str) -> dict:
    return wait_until(
        lambda: (found := row(db, rid))["status"] != "in_progress" and found,
        f"the row of {rid} to end",
    )


def test_chat_stream_is_recorded_under_the_id_in_its_chunks(
    client: openai.OpenAI, db: psycopg.Connection
):
    stream = client.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "recorded chat words"}], stream=True
    )
    chunks = list(stream)
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1
    (rid,) = ids
    assert rid == stream.response.headers["x-request-id"]
    # tiergate asked the upstream for usage; the client did not, so it gets no usage chunk.
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == "echo: recorded chat words"

    tracked = row(db, rid)
    assert tracked["status"] == "completed"
    assert (tracked["input_tokens"], tracked["output_tokens"]) == (3, 4)
    fetched = client.chat.completions.retrieve(rid)
    completion = ChatCompletion.model_validate(fetched.model_dump())
    assert completion.id == rid
    assert completion.choices[0].message.content == streamed
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 7
    # The stored body does not keep the upstream's id anywhere.
    assert "chatcmpl-mock" not in json.dumps(tracked["response_body"])


def test_chat_stream_keeps_the_usage_chunk_a_client_asked_for(
    client: openai.OpenAI, db: psycopg.Connection
):
    chunks = list(
        client.chat.completions.create(
            model="remote",
            messages=[{"role": "user", "content": "with usage"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens == 5
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert row(db, last.id)["total_tokens"] == 5


def test_responses_stream_is_recorded_and_retrievable_by_its_id(
    client: openai.OpenAI, db: psycopg.Connection
):
    with client.responses.stream(model="remote", input="responses stream words") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    rid = final.id
    assert rid.startswith("resp_") and "mock" not in rid
    assert final.output_text == "".join(deltas) == "echo: responses stream words"
    tracked = row(db, rid)
    assert tracked["status"] == "completed"
    assert tracked["total_tokens"] == final.usage.total_tokens == 7  # type: ignore[union-attr]

    fetched = client.responses.retrieve(rid)
    response = Response.model_validate(fetched.model_dump())
    assert response.id == rid and response.status == "completed"
    assert response.output_text == "".join(deltas)
    assert response.usage is not None and response.usage.output_tokens == 4


def test_every_lifecycle_event_names_tiergates_id(client: openai.OpenAI):
    with client.responses.with_streaming_response.create(
        model="remote", input="ids everywhere", stream=True
    ) as raw:
        rid = raw.headers["x-request-id"]
        events = [json.loads(line[5:]) for line in raw.iter_lines() if line.startswith("data:")]
    named = [e["response"]["id"] for e in events if "response" in e]
    assert len(named) == 3 and set(named) == {rid}  # created, in_progress, completed


def test_a_client_that_closes_right_after_the_final_event_leaves_a_completed_row(
    gateway: Gateway, key: str, mock_upstream: str, db: psycopg.Connection
):
    """The upstream keeps its body open after ``[DONE]``; the client hangs up at ``[DONE]``,
    as the SDK does. The call was answered in full: ``completed``, not ``client_disconnected``."""
    body = {
        "model": "remote",
        "messages": [{"role": "user", "content": "mock:linger=after-done-1 bye"}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", gateway.api + "/chat/completions", json=body, headers=headers) as r,
        ):
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    break
        tracked = _finished(db, rid)
    finally:
        httpx.post(mock_upstream + "/_mock/release/after-done-1").raise_for_status()
    assert tracked["status"] == "completed", tracked["error"]
    assert (
        tracked["response_body"]["choices"][0]["message"]["content"]
        == "echo: mock:linger=after-done-1 bye"
    )


def test_responses_client_closing_after_completed_event_is_completed(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    try:
        with client.responses.with_streaming_response.create(
            model="remote", input="mock:linger=after-done-2 fin", stream=True
        ) as raw:
            rid = raw.headers["x-request-id"]
            for line in raw.iter_lines():
                if line.startswith("data:") and '"response.completed"' in line:
                    break
        tracked = _finished(db, rid)
    finally:
        httpx.post(mock_upstream + "/_mock/release/after-done-2").raise_for_status()
    assert tracked["status"] == "completed", tracked["error"]
    assert client.responses.retrieve(rid).output_text == "echo: mock:linger=after-done-2 fin"


def test_a_client_that_drops_mid_stream_is_client_disconnected(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    try:
        with client.chat.completions.with_streaming_response.create(
            model="remote",
            messages=[{"role": "user", "content": "mock:hold=mid-1 never finished"}],
            stream=True,
        ) as raw:
            rid = raw.headers["x-request-id"]
            next(line for line in raw.iter_lines() if line.startswith("data:"))
        tracked = _finished(db, rid)
    finally:
        httpx.post(mock_upstream + "/_mock/release/mid-1").raise_for_status()
    assert tracked["status"] == "failed"
    assert tracked["error"]["code"] == "client_disconnected"
    assert tracked["response_body"] is None


def test_a_broken_upstream_stream_fails_the_row(client: openai.OpenAI, db: psycopg.Connection):
    with client.responses.with_streaming_response.create(
        model="remote", input="mock:drop=1 broken stream here", stream=True
    ) as raw:
        rid = raw.headers["x-request-id"]
        events = [json.loads(line[5:]) for line in raw.iter_lines() if line.startswith("data:")]
    assert events[-1]["type"] == "error"
    tracked = _finished(db, rid)
    assert tracked["status"] == "failed"
    assert tracked["error"]["code"] == "upstream_stream_broken"
    fetched = client.responses.retrieve(rid)
    assert fetched.status == "failed" and fetched.output == []


def test_a_broken_chat_stream_raises_in_the_sdk_and_fails_the_row(
    client: openai.OpenAI, db: psycopg.Connection
):
    stream = client.chat.completions.create(
        model="remote",
        messages=[{"role": "user", "content": "mock:drop=1 broken chat stream"}],
        stream=True,
    )
    rid = stream.response.headers["x-request-id"]
    try:
        list(stream)
        raised = False
    except openai.APIError:
        raised = True
    assert raised
    assert _finished(db, rid)["error"]["code"] == "upstream_stream_broken"
