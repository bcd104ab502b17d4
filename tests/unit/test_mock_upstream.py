"""Tests for the fake OpenAI-compatible provider in app/mock."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.mock.controls import parse_controls
from app.mock.server import MockDropError, create_mock_app

MODEL = "mock-model"


def _client(**kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_mock_app(**kwargs))
    return httpx.AsyncClient(transport=transport, base_url="http://mock")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with _client() as c:
        yield c


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``event:``/``data:`` SSE frames into (event, payload) pairs."""
    events = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _chat_frames(text: str) -> list[str]:
    assert text.endswith("\n\n")
    frames = text.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames)
    return [f.removeprefix("data: ") for f in frames]


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"ok": True}


async def test_responses_echo_and_usage(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/responses", json={"model": MODEL, "input": "hello big world"})
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("resp_mock_")
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["model"] == MODEL
    assert isinstance(body["created_at"], int)
    (item,) = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["id"].startswith("msg_")
    assert item["content"][0]["type"] == "output_text"
    assert item["content"][0]["text"] == "echo: hello big world"
    assert body["usage"] == {
        "input_tokens": 3,
        "output_tokens": 4,
        "total_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    assert body["error"] is None and body["tools"] == [] and body["tool_choice"] == "auto"


async def test_responses_item_list_takes_last_user_item(client: httpx.AsyncClient) -> None:
    items = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ignored"},
        {"role": "user", "content": [{"type": "input_text", "text": "last one"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "x"},
    ]
    r = await client.post("/v1/responses", json={"model": MODEL, "input": items})
    assert r.json()["output"][0]["content"][0]["text"] == "echo: last one"


async def test_chat_echo(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "old"},
        {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
    ]
    r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-mock")
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: hi there"
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (2, 3, 5)


async def test_embeddings_float(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"model": MODEL, "input": ["a b", "c"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in body["data"])
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_embeddings_base64_decodes_and_is_deterministic(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "input": "same text", "dimensions": 16}
    floats = (await client.post("/v1/embeddings", json=req)).json()["data"][0]["embedding"]
    b64_req = {**req, "encoding_format": "base64"}
    first = (await client.post("/v1/embeddings", json=b64_req)).json()["data"][0]["embedding"]
    second = (await client.post("/v1/embeddings", json=b64_req)).json()["data"][0]["embedding"]
    assert first == second
    raw = base64.b64decode(first)
    assert len(raw) == 4 * 16
    assert list(struct.unpack("<16f", raw)) == floats
    assert abs(sum(x * x for x in floats) - 1.0) < 1e-5


async def test_responses_stream_event_order(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "input": "one two", "stream": True}
    r = await client.post("/v1/responses", json=req)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    assert all(p["type"] == name for name, p in events)
    deltas = [p for name, p in events if name == "response.output_text.delta"]
    assert "".join(d["delta"] for d in deltas) == "echo: one two"
    assert all((d["output_index"], d["content_index"]) == (0, 0) for d in deltas)
    item_id = events[2][1]["item"]["id"]
    assert all(d["item_id"] == item_id for d in deltas)
    assert events[0][1]["response"]["status"] == "in_progress"
    final = events[-1][1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "echo: one two"
    assert final["usage"]["total_tokens"] == 2 + 3


async def test_chat_stream_ends_with_done(client: httpx.AsyncClient) -> None:
    req = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x y"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await client.post("/v1/chat/completions", json=req)
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = _chat_frames(r.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert content == "echo: x y"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 2 + 3


async def test_chat_stream_without_usage(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
    frames = _chat_frames((await client.post("/v1/chat/completions", json=req)).text)
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["choices"][0]["finish_reason"] == "stop"


async def test_status_429_with_retry_after_header(client: httpx.AsyncClient) -> None:
    headers = {"x-mock-behavior": "status=429,retry_after=1"}
    r = await client.post("/v1/responses", json={"model": MODEL, "input": "hi"}, headers=headers)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] is None and error["code"] == "rate_limit_exceeded"


async def test_status_from_input_text(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "messages": [{"role": "user", "content": "mock:status=503 hello"}]}
    r = await client.post("/v1/chat/completions", json=req)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "server_error"
    assert "retry-after" not in r.headers


async def test_fail_times_then_success(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "input": "mock:fail_times=2,key=t1,status=502"}
    codes = [(await client.post("/v1/responses", json=req)).status_code for _ in range(4)]
    assert codes == [502, 502, 200, 200]
    other = {"model": MODEL, "input": "mock:fail_times=1,key=t2"}
    codes = [(await client.post("/v1/responses", json=other)).status_code for _ in range(2)]
    assert codes == [500, 200]


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_missing_model_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/responses", json={"input": "hi"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"


async def test_unknown_control_is_400(client: httpx.AsyncClient) -> None:
    headers = {"x-mock-behavior": "stauts=429"}
    r = await client.post("/v1/responses", json={"model": MODEL, "input": "hi"}, headers=headers)
    assert r.status_code == 400
    assert "stauts" in r.json()["error"]["message"]


async def test_stats_counts_every_request(client: httpx.AsyncClient) -> None:
    await client.post("/v1/responses", json={"model": MODEL, "input": "a"})
    await client.post("/v1/responses", json={"model": MODEL, "input": "mock:status=500"})
    await client.post("/v1/embeddings", json={"model": MODEL, "input": "a"})
    stats = (await client.get("/_mock/stats")).json()
    assert stats == {"/v1/responses": 2, "/v1/embeddings": 1}
    await client.post("/_mock/reset")
    assert (await client.get("/_mock/stats")).json() == {}


async def test_drop_aborts_mid_body(client: httpx.AsyncClient) -> None:
    with pytest.raises(MockDropError):
        await client.post("/v1/responses", json={"model": MODEL, "input": "mock:drop=1"})


async def test_fail_rate_is_seeded() -> None:
    async def codes() -> list[int]:
        async with _client(fail_rate=0.5, seed=7) as c:
            req = {"model": MODEL, "input": "x"}
            return [(await c.post("/v1/responses", json=req)).status_code for _ in range(20)]

    first = await codes()
    assert first == await codes()
    assert {200, 500} == set(first)


def test_parse_controls_header_wins() -> None:
    controls = parse_controls("status=502", "mock:status=429,sleep_ms=5 words")
    assert controls.status == 502 and controls.sleep_ms == 5.0
    assert parse_controls(None, "plain text") == parse_controls("", "")


async def test_openai_sdk_parses_mock_answers() -> None:
    openai = pytest.importorskip("openai")
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_mock_app()))
    sdk = openai.AsyncOpenAI(api_key="x", base_url="http://mock/v1", http_client=http)
    async with sdk:
        resp = await sdk.responses.create(model=MODEL, input="hi")
        assert resp.output_text == "echo: hi"
        stream = await sdk.responses.create(model=MODEL, input="hi you", stream=True)
        events = [event async for event in stream]
        assert events[-1].type == "response.completed"
        chat = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "yo"}]
        )
        assert chat.choices[0].message.content == "echo: yo"
        emb = await sdk.embeddings.create(model=MODEL, input=["a", "b"], dimensions=4)
        assert [len(d.embedding) for d in emb.data] == [4, 4]


async def test_attempts_are_recorded_per_key_in_arrival_order(client: httpx.AsyncClient) -> None:
    before = time.time()
    req = {"model": MODEL, "input": "mock:status=429,retry_after=2,fail_times=1,key=k1 hi"}
    codes = [(await client.post("/v1/responses", json=req)).status_code for _ in range(2)]
    assert codes == [429, 200]
    plain = {"model": MODEL, "messages": [{"role": "user", "content": "mock:key=k2 x"}]}
    assert (await client.post("/v1/chat/completions", json=plain)).status_code == 200
    await client.post("/v1/responses", json={"model": MODEL, "input": "no key"})

    found = (await client.get("/_mock/attempts/k1")).json()
    assert found["key"] == "k1"
    first, second = found["attempts"]
    assert before <= first["at"] <= second["at"] <= time.time()
    assert (first["path"], first["status"], first["drop"], first["sleep_ms"]) == (
        "/v1/responses",
        429,
        False,
        0.0,
    )
    assert second["status"] == 200
    (chat,) = (await client.get("/_mock/attempts/k2")).json()["attempts"]
    assert (chat["path"], chat["status"]) == ("/v1/chat/completions", 200)
    assert (await client.get("/_mock/attempts/nobody")).json() == {"key": "nobody", "attempts": []}
    await client.post("/_mock/reset")
    assert (await client.get("/_mock/attempts/k1")).json()["attempts"] == []


async def test_fail_times_makes_sleep_slow_only_while_failing(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "input": "mock:sleep_ms=300,fail_times=1,key=slow1 hi"}
    started = time.monotonic()
    slow = await client.post("/v1/responses", json=req)
    took = time.monotonic() - started
    assert slow.status_code == 200 and took >= 0.3  # a late answer, not an error
    started = time.monotonic()
    fast = await client.post("/v1/responses", json=req)
    assert fast.status_code == 200 and time.monotonic() - started < 0.3
    seen = (await client.get("/_mock/attempts/slow1")).json()["attempts"]
    assert [(a["status"], a["sleep_ms"]) for a in seen] == [(200, 300.0), (200, 0.0)]
    # With a status, a failing request waits and then fails.
    both = {"model": MODEL, "input": "mock:sleep_ms=1,status=503,fail_times=1,key=slow2"}
    codes = [(await client.post("/v1/responses", json=both)).status_code for _ in range(2)]
    assert codes == [503, 200]


async def test_fail_times_drops_only_while_failing(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "input": "mock:drop=1,fail_times=2,key=d1"}
    for _ in range(2):
        with pytest.raises(MockDropError):
            await client.post("/v1/responses", json=req)
    ok = await client.post("/v1/responses", json=req)
    assert ok.status_code == 200 and ok.json()["status"] == "completed"
    seen = (await client.get("/_mock/attempts/d1")).json()["attempts"]
    assert [(a["status"], a["drop"]) for a in seen] == [(200, True), (200, True), (200, False)]


async def test_controls_without_fail_times_apply_every_time(client: httpx.AsyncClient) -> None:
    req = {"model": MODEL, "input": "mock:status=500,key=always"}
    codes = [(await client.post("/v1/responses", json=req)).status_code for _ in range(3)]
    assert codes == [500, 500, 500]
    assert len((await client.get("/_mock/attempts/always")).json()["attempts"]) == 3


async def test_token_array_embedding_inputs(client: httpx.AsyncClient) -> None:
    """LangChain's default embeddings client sends its texts as token arrays."""

    async def embed(value: Any) -> httpx.Response:
        return await client.post("/v1/embeddings", json={"model": MODEL, "input": value})

    one = await embed([1, 2, 3])
    many = await embed([[1, 2, 3], [4, 5]])
    assert one.status_code == many.status_code == 200
    assert one.json()["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert many.json()["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    vectors = [d["embedding"] for d in many.json()["data"]]
    assert vectors[0] == one.json()["data"][0]["embedding"] != vectors[1]
    for bad in ([], [[]], [[1, "a"]], [[1, 2], "text"], [-1], [True], [1.5]):
        refused = await embed(bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["param"] == "input"


@pytest.mark.parametrize(
    ("error_format", "media_type", "body"),
    [
        ("detail", "application/json", '{"detail":"mock status 404"}'),
        ("text", "text/plain", "mock status 404"),
        ("html", "text/html", "<h1>404 Not Found</h1><p>mock status 404</p>"),
    ],
)
async def test_error_format_answers_like_other_servers(
    client: httpx.AsyncClient, error_format: str, media_type: str, body: str
) -> None:
    req = {"model": MODEL, "input": f"mock:status=404,error_format={error_format} x"}
    r = await client.post("/v1/responses", json=req)
    assert r.status_code == 404 and r.headers["content-type"].startswith(media_type)
    assert body in r.text
    bad = {"model": MODEL, "input": "mock:status=404,error_format=xml x"}
    assert (await client.post("/v1/responses", json=bad)).status_code == 400


# --- chat-only mode (--api chat / legacy) ------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]


async def test_chat_only_mode_has_no_responses_route() -> None:
    async with _client(api="chat") as c:
        r = await c.post("/v1/responses", json={"model": MODEL, "input": "hi"})
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
        stats = (await c.get("/_mock/stats")).json()
        assert stats == {"/v1/responses": 1}


async def test_chat_only_tool_call_then_tool_result() -> None:
    async with _client(api="chat") as c:
        ask = [{"role": "user", "content": "paris"}]
        r = await c.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": ask, "tools": TOOLS}
        )
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "weather"
        assert json.loads(call["function"]["arguments"]) == {"text": "paris"}
        after = [
            *ask,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]
        r = await c.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": after, "tools": TOOLS}
        )
        assert r.json()["choices"][0]["message"]["content"] == "tool said: sunny"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_only_usage_chunk_only_when_asked(include_usage: bool) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a b c"}],
        "stream": True,
        "stream_options": {"include_usage": include_usage},
        "max_tokens": 2,
    }
    async with _client(api="chat") as c:
        r = await c.post("/v1/chat/completions", json=body)
    frames = _chat_frames(r.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert any(c.get("usage") for c in chunks) is include_usage
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["length"]
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == "echo: a"  # two words


async def test_legacy_mode_refuses_max_completion_tokens() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    async with _client(api="legacy") as c:
        refused = await c.post("/v1/chat/completions", json={**body, "max_completion_tokens": 3})
        known = await c.post("/v1/chat/completions", json={**body, "max_tokens": 3})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "max_completion_tokens"
    assert known.status_code == 200
