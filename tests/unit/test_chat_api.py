"""The upstream client on an ``api: chat`` deployment: Responses calls leave as chat calls and
come back as Responses (app/upstream/client.py, chat_api.py), against the in-process mock in
its chat-only mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.calls.policy import rule_for
from app.mock.server import create_mock_app
from app.settings import MOCK_UPSTREAM, HealthLimits, ModelConfig
from app.upstream.client import UpstreamClient, UpstreamError, prepare_body, read_all
from app.upstream.deployment import Deployment
from app.upstream.health import Health

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def deployment(**model: Any) -> Deployment:
    config = ModelConfig(name="llama", upstream=MOCK_UPSTREAM, **model)
    return Deployment(model=config, config=config.deployments[0], health=Health(HealthLimits()))


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient(mock_app=create_mock_app(api="chat"))
    yield upstream
    await upstream.aclose()


async def test_a_responses_call_is_answered_as_a_response(client: UpstreamClient):
    reply = await client.call(
        deployment(api="chat"), "/v1/responses", {"model": "llama", "input": "hi"}
    )
    response = Response.model_validate(reply.body)
    assert response.output_text == "echo: hi" and response.model == "llama"
    assert json.loads(reply.text) == reply.body  # what a worker stores


async def test_a_responses_stream_is_relayed_as_events(client: UpstreamClient):
    body = {"model": "llama", "input": "one two", "stream": True}
    async with client.open(deployment(api="chat"), "/v1/responses", body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        text = (await read_all(response)).decode()
    frames = [f for f in text.split("\n\n") if f]
    events = [EVENTS.validate_python(json.loads(f.split("\ndata: ", 1)[1])) for f in frames]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "echo: one two"
    assert events[-1].response.usage is not None


async def test_without_api_chat_the_call_gets_the_servers_404(client: UpstreamClient):
    with pytest.raises(UpstreamError) as caught:
        await client.call(deployment(), "/v1/responses", {"model": "llama", "input": "hi"})
    assert caught.value.status == 404 and caught.value.message == "Not Found"


async def test_an_untranslatable_call_is_a_final_400(client: UpstreamClient):
    body = {"model": "llama", "input": "hi", "include": ["x"]}
    with pytest.raises(UpstreamError) as caught:
        await client.call(deployment(api="chat"), "/v1/responses", body)
    assert (caught.value.status, rule_for(caught.value).retryable) == (400, False)
    assert caught.value.body["error"]["param"] == "include"


def test_token_field_applies_to_chat_calls_only():
    chat = {"model": "llama", "messages": [], "max_completion_tokens": 5}
    assert prepare_body(deployment(), chat, "/v1/chat/completions") == {**chat, "model": "llama"}
    renamed = prepare_body(deployment(api="chat"), chat, "/v1/chat/completions")
    assert renamed["max_tokens"] == 5 and "max_completion_tokens" not in renamed
    forced = deployment(max_tokens_field="max_completion_tokens")
    old = {"model": "llama", "messages": [], "max_tokens": 5}
    assert prepare_body(forced, old, "/v1/chat/completions")["max_completion_tokens"] == 5
    responses = {"model": "llama", "input": "x", "max_tokens": 5}
    assert prepare_body(forced, responses, "/v1/responses")["max_tokens"] == 5
