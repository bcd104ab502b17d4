"""The ``batch`` executor against Anthropic's Message Batches API, end to end: a tiergate
gateway (with its worker) whose deployments' upstream is the mock provider's
``/v1/messages/batches``.

Deferred rows (blocking flex requests, background requests, Batch API lines) are gathered into
Message Batches: chat and Responses bodies made Messages ``params`` and sent inline, polled,
their results read and made chat completions or Response objects again, each row finished
from its own result.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from app.testing.config import write_config
from tests.e2e.conftest import PROVIDER_SECRET, row
from tests.support.waiting import wait_until

BATCH = {
    "api": "anthropic",
    "gather_s": 1,
    "turnaround_s": 20,
    "margin_s": 5,
    "poll_min_s": 0.2,
    "poll_max_s": 0.5,
}
FAST = {"retry_base_s": 0.05, "retry_max_s": 0.2, "maintenance_every_s": 1}
# The mock records every call of the main deployment under this key (headers included).
RECORDED = f"anthclient-{uuid.uuid4().hex[:8]}"
ADOPTED = f"anthadopt-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "claude",
                "deployments": [
                    {
                        "name": "a",
                        "upstream": upstream,
                        "upstream_model": "claude-upstream",
                        "api_key_env": "TIERGATE_TEST_PROVIDER_KEY",
                        "headers": {"x-mock-behavior": f"key={RECORDED}"},
                        "executor": "batch",
                        "batch": BATCH,
                    }
                ],
                "max_attempts": 3,
            },
            {
                # Every job of this deployment expires after running its first line only.
                "name": "claude-expiring",
                "deployments": [
                    {
                        "name": "x",
                        "upstream": upstream,
                        "headers": {"x-mock-behavior": "job_expire=1,expire_after=1"},
                        "executor": "batch",
                        "batch": BATCH,
                    }
                ],
                "max_attempts": 3,
            },
            {
                # Jobs of 4 s, every call recorded: a job whose process died is adopted.
                "name": "claude-adopt",
                "deployments": [
                    {
                        "name": "d",
                        "upstream": upstream,
                        "headers": {"x-mock-behavior": f"turnaround_ms=4000,key={ADOPTED}"},
                        "executor": "batch",
                        "batch": BATCH,
                    }
                ],
                "max_attempts": 3,
            },
        ],
        {**FAST, "health": {"failures_to_trip": 1000}, "max_batch_lines": 2000},
    )


def jobs_of(db: psycopg.Connection, since_rows: int = 0) -> list[dict[str, Any]]:
    cur = db.execute("SELECT * FROM upstream_jobs ORDER BY created_at")
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()][since_rows:]


def stats(mock_upstream: str) -> dict[str, int]:
    found: dict[str, int] = httpx.get(f"{mock_upstream}/_mock/stats").json()
    return found


def created_batches(mock_upstream: str) -> int:
    return stats(mock_upstream).get("/v1/messages/batches", 0)


def test_a_blocking_flex_chat_completion_runs_in_a_message_batch(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    raw = client.chat.completions.with_raw_response.create(
        model="claude",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "through a message batch"},
        ],
        max_tokens=50,
        service_tier="flex",
    )
    completion = ChatCompletion.model_validate(raw.parse().model_dump())
    assert completion.choices[0].message.content == "echo: through a message batch"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    tracked = row(db, raw.headers["x-request-id"])
    assert tracked["executor"] == "batch" and tracked["status"] == "completed"
    assert tracked["deployment"] == "a" and tracked["attempts"] == 1
    job = next(j for j in jobs_of(db) if j["id"] == tracked["upstream_job_id"])
    assert job["status"] == "ended" and job["upstream_status"] == "completed"
    assert job["upstream_batch_id"].startswith("msgbatch_")
    assert job["rows"] == 1 and job["counts"] == {"completed": 1}
    # Anthropic's headers: the key as x-api-key, never as a bearer token
    calls = httpx.get(f"{mock_upstream}/_mock/attempts/{RECORDED}").json()["attempts"]
    create = next(c for c in calls if c["path"] == "/v1/messages/batches")
    assert create["headers"]["x-api-key"] == PROVIDER_SECRET
    assert create["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in create["headers"]
    assert any(c["path"] == f"GET /v1/messages/batches/{job['upstream_batch_id']}" for c in calls)


def test_a_flex_responses_call_is_answered_through_a_message_batch(
    client: openai.OpenAI, db: psycopg.Connection
):
    raw = client.responses.with_raw_response.create(
        model="claude", input="a response via anthropic", service_tier="flex"
    )
    response = Response.model_validate(raw.parse().model_dump())
    assert response.output_text == "echo: a response via anthropic"
    assert response.status == "completed" and response.model == "claude"
    assert response.usage is not None and response.usage.output_tokens > 0
    tracked = row(db, raw.headers["x-request-id"])
    assert tracked["executor"] == "batch" and tracked["status"] == "completed"
    assert tracked["upstream_job_id"] is not None


def _line(custom_id: str, url: str, body: dict[str, Any]) -> bytes:
    entry = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    return json.dumps(entry).encode() + b"\n"


def _run_batch(client: openai.OpenAI, content: bytes, endpoint: str) -> Batch:
    upload = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    done = wait_until(
        lambda: (
            (b := client.batches.retrieve(batch.id)).status
            in ("completed", "failed", "expired", "cancelled")
            and b
        ),
        timeout=120,
        what=f"batch {batch.id} to end",
    )
    return Batch.model_validate(done.model_dump())


def _rows_of(db: psycopg.Connection, batch_id: str) -> dict[str, tuple[Any, ...]]:
    found = db.execute(
        "SELECT custom_id, status, attempts, error->>'code', upstream_job_id, executor"
        " FROM requests WHERE batch_id = %s",
        (batch_id,),
    ).fetchall()
    return {r[0]: r[1:] for r in found}


def test_a_batch_of_50_lines_becomes_one_message_batch_and_every_line_completes_once(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    before_jobs, before = len(jobs_of(db)), stats(mock_upstream)
    content = b"".join(
        _line(f"c{i}", "/v1/responses", {"model": "claude", "input": f"line {i}"})
        for i in range(50)
    )
    done = _run_batch(client, content, "/v1/responses")
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (50, 0)
    assert done.output_file_id is not None
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    answers = {x["custom_id"]: x["response"]["body"] for x in out}
    assert len(out) == 50 and set(answers) == {f"c{i}" for i in range(50)}
    for i in range(50):
        Response.model_validate(answers[f"c{i}"])
        assert answers[f"c{i}"]["output"][0]["content"][0]["text"] == f"echo: line {i}"
    after = stats(mock_upstream)
    assert after.get("/v1/messages/batches", 0) - before.get("/v1/messages/batches", 0) == 1
    assert after["BATCH /v1/messages"] - before.get("BATCH /v1/messages", 0) == 50
    new = jobs_of(db, before_jobs)
    assert len(new) == 1 and new[0]["rows"] == 50 and new[0]["counts"] == {"completed": 50}
    rows = _rows_of(db, done.id)
    assert {r[:3] for r in rows.values()} == {("completed", 1, None)}
    assert {r[3] for r in rows.values()} == {new[0]["id"]}
    assert {r[4] for r in rows.values()} == {"batch"}


def test_line_errors_at_the_provider_fail_or_run_again(
    client: openai.OpenAI, db: psycopg.Connection
):
    def chat(text: str) -> dict[str, Any]:
        return {"model": "claude", "messages": [{"role": "user", "content": text}]}

    content = (
        _line("ok1", "/v1/chat/completions", chat("first"))
        + _line("ok2", "/v1/chat/completions", chat("second"))
        + _line("bad", "/v1/chat/completions", chat("mock:status=400 refused"))
        # overloaded_error (529): tried again, though 529 is no status tiergate retries
        + _line(
            "flaky",
            "/v1/chat/completions",
            chat(f"mock:status=529,fail_times=1,key={RECORDED}-flaky x"),
        )
    )
    done = _run_batch(client, content, "/v1/chat/completions")
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    rows = _rows_of(db, done.id)
    # a final 400 at the provider fails the line at once; a 529 there runs again (next job)
    assert rows["bad"][:3] == ("failed", 1, "upstream_400")
    assert rows["flaky"][:3] == ("completed", 2, None)
    assert rows["ok1"][:3] == rows["ok2"][:3] == ("completed", 1, None)
    assert rows["bad"][3] == rows["ok1"][3] != rows["flaky"][3]
    assert done.error_file_id is not None and done.output_file_id is not None
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["code"] == "upstream_400"
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    by_id = {x["custom_id"]: x["response"]["body"] for x in out}
    assert by_id["ok2"]["choices"][0]["message"]["content"] == "echo: second"
    ChatCompletion.model_validate(by_id["flaky"])


def test_an_untranslatable_line_fails_alone_and_the_rest_of_its_job_completes(
    client: openai.OpenAI, db: psycopg.Connection
):
    before_jobs = len(jobs_of(db))
    lines = [
        {"model": "claude", "messages": [{"role": "user", "content": f"fine {i}"}]}
        for i in range(3)
    ]
    content = b"".join(_line(f"ok{i}", "/v1/chat/completions", b) for i, b in enumerate(lines))
    two = {"model": "claude", "n": 2, "messages": [{"role": "user", "content": "two of them"}]}
    content += _line("two", "/v1/chat/completions", two)
    done = _run_batch(client, content, "/v1/chat/completions")
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    rows = _rows_of(db, done.id)
    assert rows["two"][:3] == ("failed", 1, "untranslatable_request")
    assert all(rows[f"ok{i}"][:3] == ("completed", 1, None) for i in range(3))
    new = jobs_of(db, before_jobs)
    assert len(new) == 1 and rows["two"][3] == new[0]["id"]
    # the job at the provider has the other three lines only (what find counts)
    assert new[0]["rows"] == 3 and new[0]["counts"] == {"completed": 3}
    assert done.error_file_id is not None
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["two"]
    assert errors[0]["response"]["status_code"] == 400
    error = errors[0]["response"]["body"]["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == "n"


def test_a_job_whose_every_line_is_untranslatable_is_never_sent(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    before_jobs, before = len(jobs_of(db)), created_batches(mock_upstream)
    body = {
        "model": "claude",
        "input": "with encrypted reasoning",
        "include": ["reasoning.encrypted_content"],
    }
    done = _run_batch(client, _line("only", "/v1/responses", body), "/v1/responses")
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
    assert _rows_of(db, done.id)["only"][:3] == ("failed", 1, "untranslatable_request")
    new = jobs_of(db, before_jobs)
    assert len(new) == 1 and new[0]["status"] == "ended" and new[0]["upstream_batch_id"] is None
    assert new[0]["last_error"] == "untranslatable_request"
    assert created_batches(mock_upstream) == before


def test_an_expired_job_gives_its_rows_back_and_they_complete_in_later_jobs(
    client: openai.OpenAI, db: psycopg.Connection
):
    before = len(jobs_of(db))
    ids = [
        client.responses.create(
            model="claude-expiring", input=f"patient {i}", service_tier="flex", background=True
        ).id
        for i in range(3)
    ]
    finals = [
        wait_until(
            lambda rid=rid: (
                (r := client.responses.retrieve(rid)).status not in ("queued", "in_progress") and r
            ),
            timeout=60,
            what="the response to end",
        )
        for rid in ids
    ]
    assert [f.status for f in finals] == ["completed"] * 3
    assert sorted(f.output_text for f in finals) == [f"echo: patient {i}" for i in range(3)]
    new = jobs_of(db, before)
    # each job ran its first line and expired the others, which ran again without using up
    # an attempt (gathered within a second: one job of 3 rows, then 2, then 1)
    assert new[0]["rows"] >= 2 and len(new) == len(ids)  # each job completes one row
    for job in new:
        expired = job["rows"] > 1
        assert job["upstream_status"] == ("expired" if expired else "completed")
        again = {"again": job["rows"] - 1} if expired else {}
        assert job["counts"] == {"completed": 1, **again}
    rows = [row(db, rid) for rid in ids]
    assert all(r["attempts"] == 1 and r["executor"] == "batch" for r in rows)
    assert sorted(r["upstream_job_id"] for r in rows) == sorted(j["id"] for j in new)


def _creates(mock_upstream: str) -> int:
    found = httpx.get(f"{mock_upstream}/_mock/attempts/{ADOPTED}").json()["attempts"]
    return sum(1 for a in found if a["path"] == "/v1/messages/batches")


def test_a_dead_workers_job_is_found_without_metadata_and_adopted(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    rid = client.responses.create(
        model="claude-adopt", input="adopt me", service_tier="flex", background=True
    ).id
    job = wait_until(
        lambda: next(
            (j for j in jobs_of(db) if j["model"] == "claude-adopt" and j["status"] == "running"),
            None,
        ),
        timeout=30,
        what="the job to run at the provider",
    )
    assert _creates(mock_upstream) == 1
    # The state a worker leaves when it dies after the create, before storing the job's id:
    # Anthropic keeps no metadata, so the job is recognized by its time and its one request.
    db.execute(
        "UPDATE upstream_jobs SET status = 'submitting', upstream_batch_id = NULL,"
        " owner = 'wk_dead' WHERE id = %s",
        (job["id"],),
    )
    final = wait_until(
        lambda: (r := client.responses.retrieve(rid)).status not in ("queued", "in_progress") and r,
        timeout=60,
        what="the response to end",
    )
    final = Response.model_validate(final.model_dump())
    assert final.status == "completed" and final.output_text == "echo: adopt me"
    (again,) = [j for j in jobs_of(db) if j["id"] == job["id"]]
    assert again["upstream_batch_id"] == job["upstream_batch_id"]
    assert again["counts"] == {"completed": 1}
    assert _creates(mock_upstream) == 1  # found again, not created twice
    assert row(db, rid)["attempts"] == 1
