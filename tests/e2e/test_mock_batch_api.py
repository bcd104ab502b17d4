"""The mock provider's Batch APIs (app/mock/batch_api.py) as a real process, driven by the
official ``openai`` and ``anthropic`` SDKs: shapes, the job lifecycle and every job control."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch, FileObject

from app.testing.processes import start_mock_upstream

T = TypeVar("T")
DEADLINE_S = 30.0
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mock of its own: these tests reset it and count its calls."""
    url, process = start_mock_upstream(tmp_path_factory.mktemp("logs") / "mock-batch.log")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def client(mock_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mock_url}/v1", api_key="sk-mock", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def claude(mock_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mock_url, api_key="sk-ant-mock", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def http(mock_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock_url, timeout=30) as c:
        yield c


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Poll ``probe`` until ``done`` holds, failing after ``DEADLINE_S``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value}"
        time.sleep(0.02)


def stats(http: httpx.Client) -> dict[str, int]:
    counts: dict[str, int] = http.get("/_mock/stats").json()
    return counts


# --- OpenAI ---


def chat_line(custom_id: str, text: str, model: str = "m") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(client: openai.OpenAI, lines: list[dict[str, Any]] | list[str]) -> FileObject:
    texts = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    content = ("\n".join(texts) + "\n").encode()
    return client.files.create(file=("input.jsonl", content), purpose="batch")


def create(
    client: openai.OpenAI,
    lines: list[dict[str, Any]] | list[str],
    behavior: str = "",
    endpoint: str = "/v1/chat/completions",
    metadata: dict[str, str] | None = None,
) -> Batch:
    headers = {"x-mock-behavior": behavior} if behavior else None
    return client.batches.create(
        input_file_id=upload(client, lines).id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata,
        extra_headers=headers,
    )


def finished(client: openai.OpenAI, batch_id: str) -> Batch:
    probe = lambda: client.batches.retrieve(batch_id)  # noqa: E731
    return wait_for(probe, lambda b: b.status in ENDED, f"batch {batch_id} to end")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def raw_batch(http: httpx.Client, batch_id: str) -> Batch:
    """The batch as sent on the wire, validated strictly by the SDK's model."""
    return Batch.model_validate(http.get(f"/v1/batches/{batch_id}").json())


def test_files_upload_retrieve_content_list_delete(client: openai.OpenAI) -> None:
    uploaded = upload(client, [chat_line("a", "hi")])
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch"
    assert uploaded.filename == "input.jsonl" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id) == uploaded
    assert json.loads(client.files.content(uploaded.id).text)["custom_id"] == "a"
    second = upload(client, [chat_line("b", "hi")])
    listed = [f.id for f in client.files.list(purpose="batch", limit=1)]  # pages by `after`
    assert listed.index(second.id) < listed.index(uploaded.id)  # newest first
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_batch_runs_lines_with_their_controls(client: openai.OpenAI, http: httpx.Client) -> None:
    before = stats(http)
    lines = [chat_line("ok-1", "hello world"), chat_line("bad", "mock:status=500 hi")]
    lines.append(chat_line("ok-2", "again"))
    created = create(client, lines, metadata={"owner": "t1"})
    assert created.status == "validating" and created.metadata == {"owner": "t1"}
    batch = finished(client, created.id)
    assert batch.status == "completed" and raw_batch(http, batch.id) == batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (3, 2)
    assert batch.request_counts.failed == 1
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.usage is not None and batch.usage.total_tokens > 0
    outputs = {line["custom_id"]: line for line in jsonl(client, batch.output_file_id)}
    assert set(outputs) == {"ok-1", "ok-2"}
    ok = outputs["ok-1"]
    assert ok["id"].startswith("batch_req_") and ok["error"] is None
    assert ok["response"]["status_code"] == 200 and ok["response"]["request_id"]
    assert ok["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello world"
    [failed] = jsonl(client, batch.error_file_id)
    assert failed["custom_id"] == "bad" and failed["error"] is None
    assert failed["response"]["status_code"] == 500
    assert failed["response"]["body"]["error"]["type"] == "server_error"
    assert client.files.retrieve(batch.output_file_id or "").purpose == "batch_output"
    after = stats(http)
    for path, calls in [("/v1/batches", 1), ("BATCH /v1/chat/completions", 3)]:
        assert after.get(path, 0) - before.get(path, 0) == calls
    assert after[f"GET /v1/files/{batch.output_file_id}/content"] == 1


@pytest.mark.parametrize(
    ("endpoint", "body", "check"),
    [
        ("/v1/responses", {"input": "hi you"}, lambda b: b["output"][0]["content"][0]["text"]),
        ("/v1/embeddings", {"input": "hi you"}, lambda b: len(b["data"][0]["embedding"])),
    ],
)
def test_responses_and_embeddings_lines(
    client: openai.OpenAI, endpoint: str, body: dict[str, Any], check: Callable[[Any], Any]
) -> None:
    line = {"custom_id": "x", "method": "POST", "url": endpoint, "body": {"model": "m", **body}}
    batch = finished(client, create(client, [line], endpoint=endpoint).id)
    [output] = jsonl(client, batch.output_file_id)
    assert check(output["response"]["body"]) in ("echo: hi you", 8)
    assert batch.error_file_id is None


def test_turnaround_ms_sets_how_long_a_job_takes(client: openai.OpenAI) -> None:
    started = time.monotonic()
    created = create(client, [chat_line("a", "hi")], "turnaround_ms=1200")
    assert client.batches.retrieve(created.id).status in ("validating", "in_progress")
    batch = finished(client, created.id)
    assert batch.status == "completed" and time.monotonic() - started >= 1.2


def test_every_line_failing_leaves_no_output_file(client: openai.OpenAI) -> None:
    batch = finished(client, create(client, [chat_line("a", "mock:status=400 no")]).id)
    assert batch.status == "completed" and batch.output_file_id is None
    assert jsonl(client, batch.error_file_id)[0]["response"]["status_code"] == 400


@pytest.mark.parametrize("behavior", ["job_fail=1", "job_fail=1,error_code=token_limit_exceeded"])
def test_job_fail(client: openai.OpenAI, http: httpx.Client, behavior: str) -> None:
    batch = finished(client, create(client, [chat_line("a", "hi")], behavior).id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert raw_batch(http, batch.id) == batch
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.data
    code = "token_limit_exceeded" if "error_code" in behavior else "mock_job_failed"
    assert batch.errors.data[0].code == code and batch.errors.data[0].message


@pytest.mark.parametrize("done_first", [0, 2])
def test_job_expire(client: openai.OpenAI, done_first: int) -> None:
    lines = [chat_line(f"l{i}", f"line {i}") for i in range(4)]
    batch = finished(client, create(client, lines, f"job_expire=1,expire_after={done_first}").id)
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.request_counts is not None and batch.request_counts.completed == done_first
    if done_first:
        assert [o["custom_id"] for o in jsonl(client, batch.output_file_id)] == ["l0", "l1"]
    else:
        assert batch.output_file_id is None
    errors = jsonl(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == [f"l{i}" for i in range(done_first, 4)]
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)


def test_lose(client: openai.OpenAI) -> None:
    created = create(client, [chat_line("a", "hi")], "lose=1")
    assert created.status == "validating"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(created.id)
    assert created.id not in [b.id for b in client.batches.list(limit=100)]


def test_garbage(client: openai.OpenAI) -> None:
    batch = finished(client, create(client, [chat_line("a", "hi")], "garbage=1").id)
    assert batch.status == "completed"
    text = client.files.content(batch.output_file_id or "").text
    with pytest.raises(json.JSONDecodeError):
        [json.loads(line) for line in text.splitlines()]


def test_drop_and_extra_lines(client: openai.OpenAI) -> None:
    lines = [chat_line(f"l{i}", "hi") for i in range(4)]
    dropped = create(client, lines, "drop_lines=2")
    extra = create(client, lines, "extra_lines=3")
    assert [o["custom_id"] for o in jsonl(client, finished(client, dropped.id).output_file_id)] == [
        "l0",
        "l1",
    ]
    ids = [o["custom_id"] for o in jsonl(client, finished(client, extra.id).output_file_id)]
    assert ids == ["l0", "l1", "l2", "l3", "mock-extra-0", "mock-extra-1", "mock-extra-2"]
    assert finished(client, dropped.id).request_counts.completed == 4  # type: ignore[union-attr]


def test_status_on_the_create_call(client: openai.OpenAI) -> None:
    file = upload(client, [chat_line("a", "hi")])
    known = {b.id for b in client.batches.list(limit=100)}
    for behavior, error in [
        ("status=400", openai.BadRequestError),
        ("status=503", openai.APIError),
    ]:
        with pytest.raises(error):
            client.batches.create(
                input_file_id=file.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_headers={"x-mock-behavior": behavior},
            )
    assert {b.id for b in client.batches.list(limit=100)} == known


def test_cancel_keeps_lines_done_before(client: openai.OpenAI, http: httpx.Client) -> None:
    lines = [chat_line(f"l{i}", "hi") for i in range(5)]
    created = create(client, lines, "turnaround_ms=30000")  # a line every ~6 s
    probe = lambda: client.batches.retrieve(created.id)  # noqa: E731
    wait_for(probe, lambda b: b.request_counts.completed >= 1, "the first line")  # type: ignore[union-attr]
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = finished(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert raw_batch(http, batch.id) == batch
    assert [o["custom_id"] for o in jsonl(client, batch.output_file_id)] == ["l0"]
    errors = jsonl(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["l1", "l2", "l3", "l4"]
    assert all(e["response"] is None and e["error"]["code"] == "batch_cancelled" for e in errors)
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: the same
    done = finished(client, create(client, [chat_line("a", "hi")]).id)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(done.id)


def test_list_newest_first_pages_and_metadata(client: openai.OpenAI) -> None:
    tag = f"run-{time.monotonic_ns()}"
    made = [create(client, [chat_line("a", "hi")], metadata={"tag": tag}).id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more and first.data[0].id == made[-1]
    mine = [b.id for b in client.batches.list(limit=2) if (b.metadata or {}).get("tag") == tag]
    assert mine == list(reversed(made))


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [
        ([chat_line("a", "hi"), chat_line("a", "again")], "duplicate_custom_id", 2),
        ([chat_line("a", "hi"), "{not json"], "invalid_json_line", 2),
        ([chat_line("a", "hi"), chat_line("b", "hi", model="other")], "model_mismatch", 2),
        ([{**chat_line("a", "hi"), "url": "/v1/embeddings"}], "url_mismatch", 1),
    ],
)
def test_invalid_input_fails_the_batch(
    client: openai.OpenAI, lines: list[Any], code: str, line: int
) -> None:
    batch = finished(client, create(client, lines).id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == (code, line)


# --- Anthropic ---


def request(custom_id: str, text: str, max_tokens: int = 100) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    params = {"model": "claude-mock", "max_tokens": max_tokens, "messages": messages}
    return {"custom_id": custom_id, "params": {**params, "system": "be brief"}}


def message_batch(
    claude: anthropic.Anthropic, requests: list[dict[str, Any]], behavior: str = ""
) -> MessageBatch:
    headers = {"x-mock-behavior": behavior} if behavior else None
    return claude.messages.batches.create(requests=requests, extra_headers=headers)  # type: ignore[arg-type]


def ended(claude: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    probe = lambda: claude.messages.batches.retrieve(batch_id)  # noqa: E731
    return wait_for(probe, lambda b: b.processing_status == "ended", f"{batch_id} to end")


def results(claude: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in claude.messages.batches.results(batch_id)}


def test_message_batch_answers_each_request(
    claude: anthropic.Anthropic, http: httpx.Client
) -> None:
    before = stats(http).get("BATCH /v1/messages", 0)
    bad = request("bad", "")  # its controls in a text block
    bad["params"]["messages"][0]["content"] = [{"type": "text", "text": "mock:status=500 boom"}]
    requests = [request("short", "one two three four", max_tokens=2), request("ok", "hello"), bad]
    created = message_batch(claude, requests)
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 3
    batch = ended(claude, created.id)
    wire = http.get(f"/v1/messages/batches/{batch.id}").json()
    assert MessageBatch.model_validate(wire) == batch and batch.ended_at is not None
    assert batch.results_url == f"{http.base_url}/v1/messages/batches/{batch.id}/results"
    counts = batch.request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (2, 1, 0)
    lines = http.get(f"/v1/messages/batches/{batch.id}/results").text.splitlines()
    for line in lines:
        MessageBatchIndividualResponse.model_validate(json.loads(line))
    got = results(claude, batch.id)
    ok = Message.model_validate(got["ok"].message.model_dump())
    assert ok.content[0].text == "echo: hello" and ok.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert ok.id.startswith("msg_") and ok.usage.output_tokens == 2
    short = got["short"].message
    assert short.content[0].text == "echo: one" and short.stop_reason == "max_tokens"
    assert got["bad"].type == "errored" and got["bad"].error.error.type == "api_error"
    assert stats(http)["BATCH /v1/messages"] - before == 3


def test_message_batch_expire(claude: anthropic.Anthropic) -> None:
    requests = [request(f"r{i}", "hi") for i in range(3)]
    batch = ended(claude, message_batch(claude, requests, "job_expire=1,expire_after=1").id)
    assert (batch.request_counts.succeeded, batch.request_counts.expired) == (1, 2)
    assert [r.type for r in results(claude, batch.id).values()] == [
        "succeeded",
        "expired",
        "expired",
    ]


def test_message_batch_cancel(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    before = stats(http).get("BATCH /v1/messages", 0)
    requests = [request(f"r{i}", "hi") for i in range(4)]
    created = message_batch(claude, requests, "turnaround_ms=30000")
    probe = lambda: stats(http).get("BATCH /v1/messages", 0)  # noqa: E731
    wait_for(probe, lambda n: n > before, "the first request to run")
    cancelling = claude.messages.batches.cancel(created.id)
    assert cancelling.processing_status == "canceling" and cancelling.cancel_initiated_at
    batch = ended(claude, created.id)
    assert (batch.request_counts.succeeded, batch.request_counts.canceled) == (1, 3)
    kinds = [r.type for r in results(claude, batch.id).values()]
    assert kinds == ["succeeded", "canceled", "canceled", "canceled"]


def test_message_batch_lose_and_list(claude: anthropic.Anthropic) -> None:
    lost = message_batch(claude, [request("a", "hi")], "lose=1")
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(lost.id)
    made = [message_batch(claude, [request("a", "hi")]).id for _ in range(3)]
    first = claude.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == made[:0:-1] and first.has_more
    listed = [b.id for b in claude.messages.batches.list(limit=2)]
    assert listed[:3] == list(reversed(made)) and lost.id not in listed


def test_message_batch_results_controls(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    requests = [request(f"r{i}", "hi") for i in range(3)]
    shaped = message_batch(claude, requests, "drop_lines=1,extra_lines=2")
    garbage = message_batch(claude, requests, "garbage=1")
    failing = message_batch(claude, requests, "job_fail=1")
    ids = list(results(claude, ended(claude, shaped.id).id))
    assert ids == ["r0", "r1", "mock-extra-0", "mock-extra-1"]
    text = http.get(f"/v1/messages/batches/{ended(claude, garbage.id).id}/results").text
    with pytest.raises(json.JSONDecodeError):
        [json.loads(line) for line in text.splitlines()]
    got = results(claude, ended(claude, failing.id).id)
    assert {r.type for r in got.values()} == {"errored"}


def test_message_batch_errors_are_anthropic_shaped(
    claude: anthropic.Anthropic, http: httpx.Client
) -> None:
    with pytest.raises(anthropic.RateLimitError):
        message_batch(claude, [request("a", "hi")], "status=429")
    with pytest.raises(anthropic.BadRequestError):
        message_batch(claude, [request("a", "hi"), request("a", "again")])
    body = http.get("/v1/messages/batches/msgbatch_nope").json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"


def test_reset_clears_files_and_jobs(
    client: openai.OpenAI, claude: anthropic.Anthropic, http: httpx.Client
) -> None:
    batch = create(client, [chat_line("a", "hi")])
    message = message_batch(claude, [request("a", "hi")])
    assert http.post("/_mock/reset").status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch.input_file_id)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(message.id)
    assert stats(http) == {  # counted afresh since the reset
        f"GET /v1/batches/{batch.id}": 1,
        f"GET /v1/files/{batch.input_file_id}": 1,
        f"GET /v1/messages/batches/{message.id}": 1,
    }
