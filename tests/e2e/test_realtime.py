"""Realtime calls through the official SDK: proxied at once, streamed, tracked durably."""

from __future__ import annotations

import concurrent.futures
import json
import uuid

import httpx
import openai
import psycopg

from tests.e2e.conftest import PROVIDER_SECRET, row
from tests.support.waiting import wait_until


def test_responses_realtime_is_proxied_and_tracked(client: openai.OpenAI, db: psycopg.Connection):
    raw = client.responses.with_raw_response.create(model="remote", input="hello there")
    response = raw.parse()
    assert response.output_text == "echo: hello there"
    assert response.usage is not None and response.usage.total_tokens == 5
    rid = raw.headers["x-request-id"]
    assert response.id == rid  # the id clients can fetch later
    tracked = row(db, rid)
    assert tracked["status"] == "completed"
    assert tracked["service_tier"] == "default"
    assert (tracked["input_tokens"], tracked["output_tokens"]) == (2, 3)
    assert tracked["response_status"] == 200
    assert client.responses.retrieve(rid).output_text == "echo: hello there"


def test_upstream_sees_its_own_model_name_and_provider_key(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    raw = client.responses.with_raw_response.create(
        model="remote", input="mock:key=which-model which model"
    )
    # The provider saw its own name for the model; the client sees the name it asked for.
    (sent,) = httpx.get(f"{mock_upstream}/_mock/attempts/which-model").json()["attempts"]
    assert sent["body"]["model"] == "remote-upstream"
    assert raw.parse().model == "remote"
    stored = json.dumps(row(db, raw.headers["x-request-id"]), default=str)
    assert PROVIDER_SECRET not in stored
    assert "tg-" not in stored  # nor the client's own key


def test_responses_streaming_passes_events_through(client: openai.OpenAI, db: psycopg.Connection):
    with client.responses.with_streaming_response.create(
        model="remote", input="one two three", stream=True
    ) as raw:
        rid = raw.headers["x-request-id"]
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in raw.iter_lines() if line.startswith("data:")]
    types = [event["type"] for event in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas.split() == ["echo:", "one", "two", "three"]
    tracked = row(db, rid)
    assert tracked["status"] == "completed" and tracked["stream"] is True
    assert tracked["total_tokens"] == events[-1]["response"]["usage"]["total_tokens"]


def test_sdk_stream_helper_works(client: openai.OpenAI):
    stream = client.responses.create(model="mock", input="streamed by sdk", stream=True)
    texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
    assert "".join(texts).split() == ["echo:", "streamed", "by", "sdk"]


def test_chat_completions_realtime_and_stream(client: openai.OpenAI, db: psycopg.Connection):
    completion = client.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "hi chat"}]
    )
    assert completion.choices[0].message.content == "echo: hi chat"
    chunks = list(
        client.chat.completions.create(
            model="remote",
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["echo:", "a", "b"]
    assert chunks[-1].usage is not None
    assert row(db, completion.id)["status"] == "completed"


def test_embeddings_realtime(client: openai.OpenAI):
    result = client.embeddings.create(model="remote", input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    again = client.embeddings.create(model="remote", input="alpha", encoding_format="float")
    assert again.data[0].embedding == result.data[0].embedding


def test_upstream_error_passes_through_with_its_status(client: openai.OpenAI, db):
    try:
        client.responses.create(model="remote", input="mock:status=400")
    except openai.BadRequestError as exc:
        rid = exc.response.headers["x-request-id"]
    else:
        raise AssertionError("expected a 400")
    tracked = row(db, rid)
    assert tracked["status"] == "failed" and tracked["response_status"] == 400


def test_stream_events_reach_the_client_as_they_arrive(client: openai.OpenAI, mock_upstream: str):
    """The upstream sends one event, then holds the rest until the client has seen it:
    a gateway that buffered the stream would leave this test waiting forever."""
    with client.responses.with_streaming_response.create(
        model="remote", input="mock:hold=relay-1 live words", stream=True
    ) as raw:
        lines = raw.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["type"] == "response.created"
        httpx.post(mock_upstream + "/_mock/release/relay-1").raise_for_status()
        rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert rest[-1]["type"] == "response.completed"


def test_answers_name_the_model_the_client_asked_for(client: openai.OpenAI):
    """``remote`` is ``remote-upstream`` to its provider: every answer, on every tier and in
    every event of a stream, says ``remote``, whichever deployment served it."""
    messages = [{"role": "user", "content": "names"}]
    chat = client.chat.completions.create(model="remote", messages=messages)
    flex = client.chat.completions.create(model="remote", messages=messages, service_tier="flex")
    chunks = list(client.chat.completions.create(model="remote", messages=messages, stream=True))
    embedded = client.embeddings.create(model="remote", input="names")
    with client.responses.stream(model="remote", input="names") as stream:
        events = list(stream)
    final = events[-1]
    assert final.type == "response.completed"
    background = client.responses.create(
        model="remote", input="names", background=True, stream=True
    )
    stored = [e.response.model for e in background if hasattr(e, "response")]
    assert len(stored) >= 3  # created, in_progress, completed: stored by the worker too
    assert {chat.model, flex.model, embedded.model, final.response.model, *stored} == {"remote"}
    assert {chunk.model for chunk in chunks} == {"remote"}


def test_a_whole_answer_is_one_final_row_unless_the_call_runs_long(
    client: openai.OpenAI, db: psycopg.Connection
):
    """A quick call's row is final when its answer arrives; a call still running after
    ``realtime_row_after_s`` (0.5 s here) has its row in_progress from then on, so a crash
    leaves a trace. (That a quick call's row is one INSERT is shown by the store's test,
    tests/integration/test_request_store.py.)"""
    quick = client.chat.completions.with_raw_response.create(
        model="remote", messages=[{"role": "user", "content": "quick"}]
    )
    tracked = row(db, quick.headers["x-request-id"])
    assert tracked["status"] == "completed" and tracked["finished_at"] is not None

    marker = f"mock:sleep_ms=3000 slow-{uuid.uuid4().hex[:8]}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            client.chat.completions.with_raw_response.create,
            model="remote",
            messages=[{"role": "user", "content": marker}],
        )

        def running() -> str | None:
            found = db.execute(
                "SELECT id FROM requests WHERE status = 'in_progress'"
                " AND body->'messages'->0->>'content' = %s",
                (marker,),
            ).fetchone()
            return found[0] if found else None

        rid = wait_until(running, "the slow call's row, in_progress", timeout=2.5)
        assert not slow.done()  # the row was there while the call ran
        answered = slow.result()
    assert answered.headers["x-request-id"] == rid
    assert row(db, rid)["status"] == "completed"
