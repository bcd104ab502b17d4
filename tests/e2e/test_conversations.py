"""Conversations by id: ``previous_response_id`` is resolved by tiergate for every tier, and
``GET /v1/responses/{id}/input_items`` lists what a Response was given."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai.types.responses import ResponseItem
from pydantic import TypeAdapter

from app.testing.processes import Gateway
from tests.support.batches import jsonl, responses_line, upload

ITEM = TypeAdapter(ResponseItem)
TIMEOUT_S = 60.0


def upstream_saw(mock_upstream: str, key: str) -> dict:
    """The body of the one request the mock upstream recorded under ``key``."""
    (attempt,) = httpx.get(f"{mock_upstream}/_mock/attempts/{key}").json()["attempts"]
    return attempt["body"]


def texts(items: list) -> list[str]:
    """The text of each message item, whatever its content's form."""
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.append(" ".join(part.get("text", "") for part in content))
    return out


def poll(client: openai.OpenAI, rid: str):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        response = client.responses.retrieve(rid)
        if response.status not in ("queued", "in_progress"):
            return response
        time.sleep(0.05)
    raise AssertionError(f"{rid} did not finish")


def test_two_turns_send_the_history_and_not_the_id(client: openai.OpenAI, mock_upstream: str):
    first = client.responses.create(
        model="remote", input="mock:key=conv-rt-1 my name is Ada", instructions="Be terse."
    )
    second = client.responses.create(
        model="remote", input="mock:key=conv-rt-2 what is my name", previous_response_id=first.id
    )
    assert second.output_text == "echo: mock:key=conv-rt-2 what is my name"
    assert second.previous_response_id == first.id
    sent = upstream_saw(mock_upstream, "conv-rt-2")
    assert "previous_response_id" not in sent
    assert "instructions" not in sent  # not carried over, as OpenAI documents
    assert texts(sent["input"]) == [
        "mock:key=conv-rt-1 my name is Ada",
        first.output_text,
        "mock:key=conv-rt-2 what is my name",
    ]
    assert sent["input"][1]["role"] == "assistant"

    # A chain: the third turn carries all of it, from one read of the second.
    third = client.responses.create(
        model="remote", input="mock:key=conv-rt-3 and again", previous_response_id=second.id
    )
    assert texts(upstream_saw(mock_upstream, "conv-rt-3")["input"]) == [
        "mock:key=conv-rt-1 my name is Ada",
        first.output_text,
        "mock:key=conv-rt-2 what is my name",
        second.output_text,
        "mock:key=conv-rt-3 and again",
    ]
    assert third.status == "completed"


def test_streamed_turn_continues_a_streamed_one(client: openai.OpenAI, mock_upstream: str):
    with client.responses.stream(model="remote", input="stream turn one") as stream:
        first = stream.get_final_response()
    with client.responses.stream(
        model="remote", input="mock:key=conv-st-2 turn two", previous_response_id=first.id
    ) as stream:
        second = stream.get_final_response()
    assert second.output_text == "echo: mock:key=conv-st-2 turn two"
    assert second.previous_response_id == first.id
    assert client.responses.retrieve(second.id).previous_response_id == first.id
    assert texts(upstream_saw(mock_upstream, "conv-st-2")["input"]) == [
        "stream turn one",
        "echo: stream turn one",
        "mock:key=conv-st-2 turn two",
    ]


@pytest.mark.parametrize("tier", ["flex", "background"])
def test_deferred_tiers_resolve_the_history_too(
    client: openai.OpenAI, mock_upstream: str, tier: str
):
    first = client.responses.create(
        model="remote", input=f"{tier} first", service_tier="flex" if tier == "flex" else "auto"
    )
    key = f"conv-{tier}-2"
    args: dict = {"service_tier": "flex"} if tier == "flex" else {"background": True}
    second = client.responses.create(
        model="remote", input=f"mock:key={key} {tier} second", previous_response_id=first.id, **args
    )
    if tier == "background":
        assert second.status == "queued" and second.previous_response_id == first.id
        second = poll(client, second.id)
    assert second.status == "completed"
    sent = upstream_saw(mock_upstream, key)
    assert "previous_response_id" not in sent
    assert texts(sent["input"]) == [
        f"{tier} first",
        f"echo: {tier} first",
        f"mock:key={key} {tier} second",
    ]


def test_batch_lines_resolve_the_history(client: openai.OpenAI, mock_upstream: str):
    first = client.responses.create(model="remote", input="batch history")
    line = responses_line("turn-2", "mock:key=conv-batch-2 batch turn")
    line["body"]["previous_response_id"] = first.id
    unknown = responses_line("bad", "never runs")
    unknown["body"]["previous_response_id"] = "resp_nope"
    batch = client.batches.create(
        input_file_id=upload(client, jsonl([line])),
        endpoint="/v1/responses",
        completion_window="24h",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert batch.status == "completed"
    assert texts(upstream_saw(mock_upstream, "conv-batch-2")["input"]) == [
        "batch history",
        "echo: batch history",
        "mock:key=conv-batch-2 batch turn",
    ]
    refused = client.batches.create(
        input_file_id=upload(client, jsonl([unknown])),
        endpoint="/v1/responses",
        completion_window="24h",
    )
    while (refused := client.batches.retrieve(refused.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert refused.status == "failed"
    assert refused.errors is not None and refused.errors.data is not None
    (error,) = refused.errors.data
    assert (error.code, error.line, error.param) == (
        "previous_response_not_found",
        1,
        "body.previous_response_id",
    )


def test_unknown_and_foreign_ids_are_previous_response_not_found(
    client: openai.OpenAI, gateway: Gateway, other_key: str
):
    mine = client.responses.create(model="remote", input="private history")
    intruder = openai.OpenAI(base_url=gateway.api, api_key=other_key, max_retries=0)
    for who, previous in ((intruder, mine.id), (client, "resp_0000unknown"), (client, "x'y")):
        with pytest.raises(openai.NotFoundError) as caught:
            who.responses.create(model="remote", input="next", previous_response_id=previous)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["code"] == "previous_response_not_found"
        assert error["param"] == "previous_response_id"
    for tier in ("flex", "background"):
        args: dict = {"service_tier": "flex"} if tier == "flex" else {"background": True}
        with pytest.raises(openai.NotFoundError):
            intruder.responses.create(
                model="remote", input="next", previous_response_id=mine.id, **args
            )
    client.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="remote", input="next", previous_response_id=mine.id)


def test_input_items_list_the_whole_history_with_pagination(
    client: openai.OpenAI, gateway: Gateway, other_key: str
):
    first = client.responses.create(
        model="remote",
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "bonjour"}]},
        ],
    )
    second = client.responses.create(model="remote", input="ça va ?", previous_response_id=first.id)
    page = client.responses.input_items.list(second.id, order="asc", limit=2)
    assert [type(item).__name__ for item in page.data] == [
        "ResponseInputMessageItem",
        "ResponseInputMessageItem",
    ]
    assert page.has_more is True
    items = list(client.responses.input_items.list(second.id, order="asc", limit=2))
    assert len(items) == 4  # the SDK pages with after=<last id>
    assert [item.role for item in items] == ["developer", "user", "assistant", "user"]  # type: ignore[union-attr]
    assert items[2].id == first.output[0].id  # the earlier output item keeps its id
    assert len({item.id for item in items}) == 4
    for item in items:
        ITEM.validate_python(item.model_dump())
    newest_first = client.responses.input_items.list(second.id).data
    assert [i.id for i in newest_first] == [i.id for i in reversed(items)]
    # The ids are stable: the same on every read.
    again = client.responses.input_items.list(second.id, order="asc", after=items[1].id, limit=1)
    assert [i.id for i in again.data] == [items[2].id] and again.has_more is True

    raw = httpx.get(
        f"{gateway.api}/responses/{second.id}/input_items",
        headers={"Authorization": f"Bearer {client.api_key}"},
    ).json()
    assert raw["object"] == "list" and raw["first_id"] == raw["data"][0]["id"]
    assert raw["last_id"] == raw["data"][-1]["id"] and raw["has_more"] is False
    assert texts(raw["data"]) == ["ça va ?", "echo: bonjour", "bonjour", "Answer in French."]

    intruder = openai.OpenAI(base_url=gateway.api, api_key=other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        intruder.responses.input_items.list(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_0000unknown")


def test_a_response_still_running_cannot_be_continued_yet(client: openai.OpenAI):
    running = client.responses.create(
        model="remote", input="mock:sleep_ms=3000 still thinking", background=True
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="remote", input="next", previous_response_id=running.id)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "previous_response_not_finished"
    assert caught.value.body["param"] == "previous_response_id"
    done = poll(client, running.id)
    assert done.status == "completed"
    follow = client.responses.create(model="remote", input="next", previous_response_id=done.id)
    assert follow.status == "completed"
