"""The Batch API through the official SDK: files, batches, result files, lifecycle."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from app.testing.processes import Gateway
from tests.support.batches import chat_line, jsonl, upload

TIMEOUT_S = 90.0
FINAL = {"completed", "failed", "expired", "cancelled"}


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


def custom_ids(client: openai.OpenAI, batch) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        line["custom_id"]
        for file_id in (batch.output_file_id, batch.error_file_id)
        for line in results(client, file_id)
    ]


def test_cancel_mid_run_keeps_partial_results(client: openai.OpenAI):
    lines = [chat_line(f"c-{i}", "mock:sleep_ms=150", model="slow-batch") for i in range(30)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while client.batches.retrieve(batch.id).request_counts.completed < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert 2 <= done.request_counts.completed < 30
    assert done.request_counts.completed + done.request_counts.failed == 30
    ids = custom_ids(client, done)
    assert sorted(ids) == sorted(f"c-{i}" for i in range(30))  # each exactly once
    cancelled = [
        e
        for e in results(client, done.error_file_id)
        if e["error"] and e["error"]["code"] == "batch_cancelled"
    ]
    assert cancelled and all(e["response"] is None for e in cancelled)
    assert client.batches.cancel(batch.id).status == "cancelled"  # idempotent


def test_short_window_expires_unfinished_lines(client: openai.OpenAI):
    lines = [chat_line(f"e-{i}", "mock:sleep_ms=400", model="slow-batch") for i in range(40)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="4s",  # type: ignore[arg-type]
    )
    done = wait_for(client, batch.id)
    assert done.status == "expired" and done.expired_at
    counts = done.request_counts
    assert counts.completed + counts.failed == 40 and counts.failed > 0
    errors = results(client, done.error_file_id)
    assert len(errors) == counts.failed
    # Lines that never ran all say why, with the batch's code (not a single request's).
    assert {(e["response"], e["error"]["code"]) for e in errors} == {(None, "batch_expired")}
    assert sorted(custom_ids(client, done)) == sorted(f"e-{i}" for i in range(40))


def test_other_keys_see_nothing(client: openai.OpenAI, gateway: Gateway, other_key: str):
    file_id = upload(client, jsonl([chat_line("mine", "private")]))
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    intruder = openai.OpenAI(base_url=gateway.api, api_key=other_key, max_retries=0)
    for call in (
        lambda: intruder.batches.retrieve(batch.id),
        lambda: intruder.batches.cancel(batch.id),
        lambda: intruder.files.retrieve(file_id),
        lambda: intruder.files.content(file_id),
        lambda: intruder.files.content(done.output_file_id),
        lambda: intruder.files.delete(file_id),
        lambda: intruder.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in intruder.batches.list()]
    assert file_id not in [f.id for f in intruder.files.list()]
    assert client.files.retrieve(file_id).id == file_id


def test_list_paginates_newest_first(client: openai.OpenAI):
    file_id = upload(client, jsonl([chat_line("p", "page")]))
    made = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    page = client.batches.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert [b.id for b in page.data] == made[::-1][:2]
    every = [b.id for b in client.batches.list(limit=2)]  # the SDK follows `after`
    assert every[:3] == made[::-1] and len(every) == len(set(every))
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


def test_files_list_retrieve_delete(client: openai.OpenAI):
    content = jsonl([chat_line("f", "file")])
    file_id = upload(client, content, name="mine.jsonl")
    meta = client.files.retrieve(file_id)
    assert (meta.filename, meta.bytes, meta.purpose) == ("mine.jsonl", len(content), "batch")
    assert client.files.content(file_id).read() == content
    assert file_id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_large_file_round_trips_across_parts(client: openai.OpenAI):
    big = jsonl([chat_line(f"big-{i}", "x" * 1000) for i in range(3000)])  # ~3.3 MB
    file_id = upload(client, big)
    assert client.files.retrieve(file_id).bytes == len(big)
    assert client.files.content(file_id).read() == big


def test_upload_errors(client: openai.OpenAI, gateway: Gateway, key: str):
    import httpx

    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    response = httpx.post(
        gateway.api + "/files",
        headers={"Authorization": f"Bearer {key}"},
        data={"purpose": "batch"},
    )
    assert response.status_code == 400


def test_limits_and_model_permissions(client: openai.OpenAI, gateway: Gateway, database):
    from app.testing.processes import create_key

    too_many = jsonl([chat_line(f"m-{i}", "x") for i in range(101)])  # limit: 100 here
    batch = client.batches.create(
        input_file_id=upload(client, too_many),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_for(client, batch.id)
    assert done.status == "failed" and [e.code for e in done.errors.data] == ["too_many_tasks"]

    limited = openai.OpenAI(
        base_url=gateway.api,
        max_retries=0,
        api_key=create_key(database.libpq(), "mock-only", "mock"),
    )
    batch = limited.batches.create(
        input_file_id=upload(limited, jsonl([chat_line("r", "x", model="remote")])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_for(limited, batch.id)
    assert done.status == "failed"
    assert [(e.code, e.line) for e in done.errors.data] == [("model_not_allowed", 1)]

    with pytest.raises(openai.APIStatusError) as info:
        upload(client, b"x" * 5_100_000)
    assert info.value.status_code == 413


def test_lines_finish_one_by_one(client: openai.OpenAI, db):
    """Each line's result is stored when it ends: request_counts move while the batch runs,
    and every line has timestamps of its own (the model runs 2 calls at a time)."""
    lines = [chat_line(f"s-{i}", "mock:sleep_ms=200", model="slow-batch") for i in range(12)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    seen: set[int] = set()
    deadline = time.monotonic() + TIMEOUT_S
    while (current := client.batches.retrieve(batch.id)).status not in FINAL:
        assert time.monotonic() < deadline, current.status
        assert current.request_counts is not None
        seen.add(current.request_counts.completed)
        time.sleep(0.05)
    assert current.status == "completed"
    # Six rounds of two 200 ms calls: the counts were seen strictly between 0 and 12.
    assert len({n for n in seen if 0 < n < 12}) >= 3, sorted(seen)
    finished = db.execute(
        "SELECT finished_at FROM requests WHERE batch_id = %s ORDER BY finished_at", (batch.id,)
    ).fetchall()
    spread = finished[-1][0] - finished[0][0]
    assert len({row[0] for row in finished}) >= 6 and spread.total_seconds() >= 0.8
