"""Background streaming with resume: ``background=true, stream=true`` answers at once with an
SSE stream of stored events; ``GET /v1/responses/{id}?stream=true&starting_after=N`` resumes
it; a cancel ends every follower's stream with ``response.cancelled``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.store.dburl import DatabaseURL
from app.testing.processes import Gateway
from app.vocabulary import Channel
from tests.e2e.conftest import row

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def validated(events: list[Any]) -> list[Any]:
    """Each event as the SDK's own type (a missing required field fails)."""
    return [EVENT.validate_python(e.model_dump()) for e in events]


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of a raw SSE answer (comments skipped)."""
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


@pytest.fixture(scope="module")
def other_client(gateway: Gateway, other_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=other_key, max_retries=0, timeout=60)


@pytest.fixture
def flushes(database: DatabaseURL):
    """Counts ``NOTIFY tiergate_events`` per response id: one per stored batch of events."""
    with psycopg.connect(database.libpq(), autocommit=True) as conn:
        conn.execute(f"LISTEN {Channel.EVENTS}")

        def count(rid: str) -> int:
            return sum(n.payload == rid for n in conn.notifies(timeout=0.5))

        yield count


def test_background_stream_events_validate(client: openai.OpenAI, db, flushes):
    stream = client.responses.create(
        model="remote", input="a background stream of words", background=True, stream=True
    )
    rid = stream.response.headers["x-request-id"]
    events = validated(list(stream))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert kinds[-1] == "response.completed" and kinds.count("response.completed") == 1
    assert events[0].response.status == "queued" and events[0].response.background is True
    assert {e.response.id for e in events if hasattr(e, "response")} == {rid}
    final = Response.model_validate(events[-1].response.model_dump())
    assert final.status == "completed" and final.output_text == text_of(events)
    assert final.output_text == "echo: a background stream of words"
    assert client.responses.retrieve(rid).output_text == final.output_text
    # Every event stored, with far fewer writes than events: the opening pair with the row,
    # then batches (a NOTIFY each), the last one with the final status.
    stored = db.execute("SELECT count(*) FROM response_events WHERE response_id = %s", (rid,))
    assert stored.fetchone()[0] == len(events)
    writes = flushes(rid)
    assert 1 <= writes <= 3 < len(events)
    print(f"\n{len(events)} events stored by 1 + {writes} writes")
    assert row(db, rid)["status"] == "completed"


def test_interrupted_stream_resumes_exactly_once(client: openai.OpenAI, mock_upstream: str):
    """The upstream holds after its first event: the client reads three events, drops the
    connection, and resumes with ``starting_after`` once the rest was produced."""
    stream = client.responses.create(
        model="remote", input="mock:hold=bg-resume-1 resumed words", background=True, stream=True
    )
    rid = stream.response.headers["x-request-id"]
    seen = []
    for event in stream:
        seen.append(EVENT.validate_python(event.model_dump()))
        if len(seen) == 3:
            break
    stream.close()
    assert [e.type for e in seen][-1] == "response.in_progress"
    httpx.post(mock_upstream + "/_mock/release/bg-resume-1").raise_for_status()
    rest = validated(
        list(client.responses.retrieve(rid, stream=True, starting_after=seen[-1].sequence_number))
    )
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert text_of(events) == "echo: mock:hold=bg-resume-1 resumed words"
    # The SDK's helper reads from the start and keeps what follows its starting_after.
    with client.responses.stream(response_id=rid, starting_after=4) as helper:
        tail = list(helper)
        final = helper.get_final_response()
    assert [e.sequence_number for e in tail] == list(range(5, len(events)))
    assert final.id == rid and final.output_text == text_of(events)


def test_resume_of_a_finished_response(client: openai.OpenAI):
    first = validated(
        list(
            client.responses.create(
                model="remote", input="done already", background=True, stream=True
            )
        )
    )
    rid = first[-1].response.id
    again = validated(list(client.responses.retrieve(rid, stream=True)))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in first]
    later = validated(list(client.responses.retrieve(rid, stream=True, starting_after=3)))
    assert [e.model_dump() for e in later] == [e.model_dump() for e in first[4:]]
    assert list(client.responses.retrieve(rid, stream=True, starting_after=len(first) - 1)) == []


def test_background_response_without_stream_is_replayed(client: openai.OpenAI):
    created = client.responses.create(model="remote", input="not streamed", background=True)
    events = validated(list(client.responses.retrieve(created.id, stream=True)))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.id == created.id
    assert text_of(events) == events[-1].response.output_text == "echo: not streamed"


def test_cancel_ends_every_follower_with_cancelled(
    gateway: Gateway, key: str, client: openai.OpenAI, mock_upstream: str
):
    headers = {"authorization": f"Bearer {key}"}
    body = {
        "model": "remote",
        "input": "mock:hold=bg-cancel-1 never finished",
        "background": True,
        "stream": True,
    }
    with (
        httpx.Client(base_url=gateway.api, headers=headers, timeout=30) as http,
        http.stream("POST", "/responses", json=body) as creating,
    ):
        rid = creating.headers["x-request-id"]
        lines = creating.iter_lines()
        head = []
        for line in lines:
            if line.startswith("data:"):
                head.append(json.loads(line[5:]))
                if head[-1]["type"] == "response.in_progress":
                    break
        # The upstream holds: the stream waits, with keep-alive comments.
        assert next(line for line in lines if line) == ": keep-alive"
        with http.stream("GET", f"/responses/{rid}", params={"stream": "true"}) as other:
            cancelled = client.responses.cancel(rid)
            assert cancelled.status == "cancelled"
            followed = sse_events(other)
        rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    httpx.post(mock_upstream + "/_mock/release/bg-cancel-1")
    events = head + rest
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert followed == events  # the second follower saw the same stream
    assert events[-1]["type"] == "response.cancelled"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "cancelled" and final.error is None and final.id == rid
    for event in events[:-1]:
        EVENT.validate_python(event)
    # The SDK reads the cancelled stream too (it has no type for the last event: it keeps
    # its fields as they came).
    replayed = list(client.responses.retrieve(rid, stream=True, starting_after=len(events) - 2))
    assert [(e.type, e.sequence_number) for e in replayed] == [
        ("response.cancelled", len(events) - 1)
    ]


def test_another_keys_id_is_404(client: openai.OpenAI, other_client: openai.OpenAI):
    stream = client.responses.create(model="remote", input="mine", background=True, stream=True)
    rid = stream.response.headers["x-request-id"]
    list(stream)
    with pytest.raises(openai.NotFoundError):
        list(other_client.responses.retrieve(rid, stream=True))
    with pytest.raises(openai.NotFoundError):
        list(other_client.responses.retrieve("resp_doesnotexist", stream=True, starting_after=2))


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", "9999999999"])
def test_bad_starting_after_is_400(gateway: Gateway, key: str, client: openai.OpenAI, bad: str):
    created = client.responses.create(model="remote", input="x", background=True)
    answer = httpx.get(
        f"{gateway.api}/responses/{created.id}",
        params={"stream": "true", "starting_after": bad},
        headers={"authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "starting_after"


def test_a_retried_attempt_goes_on_numbering(client: openai.OpenAI):
    """The upstream drops the first attempt mid-stream: the events it stored stay, and the
    retry goes on after them with a fresh ``response.in_progress`` (what docs/api.md says a
    reader sees)."""
    stream = client.responses.create(
        model="remote",
        input="mock:drop=1,fail_times=1,key=bg-retry-1 retried words",
        background=True,
        stream=True,
    )
    events = validated(list(stream))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    starts = [i for i, e in enumerate(events) if e.type == "response.in_progress"]
    assert len(starts) == 2 and events[-1].type == "response.completed"
    last_attempt = events[starts[1] :]
    assert text_of(last_attempt) == events[-1].response.output_text
    assert (
        events[-1].response.output_text
        == "echo: mock:drop=1,fail_times=1,key=bg-retry-1 retried words"
    )


def test_delete_removes_the_events(client: openai.OpenAI, db):
    stream = client.responses.create(model="remote", input="deleted", background=True, stream=True)
    rid = stream.response.headers["x-request-id"]
    assert list(stream)[-1].type == "response.completed"
    client.responses.delete(rid)
    stored = db.execute("SELECT count(*) FROM response_events WHERE response_id = %s", (rid,))
    assert stored.fetchone()[0] == 0
    with pytest.raises(openai.NotFoundError):
        list(client.responses.retrieve(rid, stream=True))
