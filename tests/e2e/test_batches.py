"""The Batch API through the official SDK: files, batches, result files, lifecycle."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

TIMEOUT_S = 90.0
FINAL = {"completed", "failed", "expired", "cancelled"}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def chat_line(custom_id: str, text: str, model: str = "remote") -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def upload(client: openai.OpenAI, content: bytes, name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch").id


def wait_for(client: openai.OpenAI, batch_id: str, statuses: set[str] = FINAL):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        assert counts is not None and counts.completed + counts.failed <= counts.total
        if batch.status in statuses:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def results(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).read().splitlines()]


def test_batch_runs_to_completion_with_output_and_error_files(client: openai.OpenAI):
    lines = [chat_line(f"ok-{i}", f"line {i}") for i in range(40)]
    lines += [chat_line(f"bad-{i}", "mock:status=400") for i in range(3)]
    file_id = upload(client, jsonl(lines))
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    assert batch.status == "validating" and batch.metadata == {"run": "nightly"}
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.total == 43
    assert (done.request_counts.completed, done.request_counts.failed) == (40, 3)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = results(client, done.output_file_id)
    errors = results(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"ok-{i}" for i in range(40))
    assert sorted(e["custom_id"] for e in errors) == ["bad-0", "bad-1", "bad-2"]
    first = next(o for o in output if o["custom_id"] == "ok-7")
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "echo: line 7"
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["message"]
    out_file = client.files.retrieve(done.output_file_id)
    assert out_file.purpose == "batch_output" and out_file.bytes > 0


def test_invalid_lines_fail_the_batch_with_line_numbers(client: openai.OpenAI):
    content = b"\n".join(
        [
            json.dumps(chat_line("a", "x")).encode(),
            b"{not json",
            json.dumps(chat_line("a", "duplicate")).encode(),
            json.dumps({**chat_line("c", "x"), "url": "/v1/embeddings"}).encode(),
            json.dumps(chat_line("d", "x", model="other")).encode(),
        ]
    )
    batch = client.batches.create(
        input_file_id=upload(client, content),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_for(client, batch.id)
    assert done.status == "failed" and done.failed_at
    found = {(e.code, e.line) for e in done.errors.data}
    assert found == {
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("url_mismatch", 4),
        ("model_mismatch", 5),
    }


def test_empty_file_fails(client: openai.OpenAI):
    batch = client.batches.create(
        input_file_id=upload(client, b"\n\n"),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_for(client, batch.id)
    assert done.status == "failed"
    assert [e.code for e in done.errors.data] == ["empty_file"]


def test_create_rejects_bad_arguments(client: openai.OpenAI):
    file_id = upload(client, jsonl([chat_line("a", "x")]))
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/nope",  # type: ignore[arg-type]
            completion_window="24h",
        )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="7d"
        )  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
