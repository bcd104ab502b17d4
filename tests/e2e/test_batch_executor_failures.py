"""The ``batch`` executor when the provider's Batch API misbehaves (the mock provider's job
controls): nothing is lost, nothing is done twice, nothing hangs.

Each model's deployment sends its controls in ``x-mock-behavior`` on every call; ``jobs=1``
makes them hold for the first job only, so the rows' next job shows how they recover.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from openai.types import Batch

from app.testing.config import write_config
from tests.support.waiting import wait_until

BATCH = {"turnaround_s": 20, "margin_s": 5, "gather_s": 1, "poll_min_s": 0.2, "poll_max_s": 0.5}
SCENARIOS = {
    "lost": "lose=1,jobs=1",
    "failing": "job_fail=1,jobs=1",
    "expiring": "job_expire=1,expire_after=1,turnaround_ms=600,jobs=1",
    "garbage": "garbage=1,jobs=1",
    "dropping": "drop_lines=1,jobs=1",
    "extra": "extra_lines=2",
    "twostep": "fail_creates=1",
    "adopt": "turnaround_ms=4000",
    "tight": "turnaround_ms=120000",
    "cached": "turnaround_ms=300",
}
# A 24 h line's window ends 86,390 s after this job was sent, 10 s from now: the job is cancelled
TIGHT = {**BATCH, "turnaround_s": 1, "margin_s": 86_390}


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    models = [
        {
            "name": name,
            "deployments": [
                {
                    "name": "provider",
                    "upstream": f"{mock_upstream}/v1",
                    "executor": "batch",
                    "batch": TIGHT if name == "tight" else BATCH,
                    "headers": {"x-mock-behavior": f"{controls},key=bx-{name}"},
                }
            ],
            "max_attempts": 3,
            **({"cache": {"exact": True}} if name == "cached" else {}),
        }
        for name, controls in SCENARIOS.items()
    ]
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        models,
        {
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
            "maintenance_every_s": 1,
            "health": {"failures_to_trip": 1000},
        },
    )


def run_batch(client: openai.OpenAI, model: str, n: int) -> Batch:
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"{model}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]},
            }
        )
        + "\n"
        for i in range(n)
    )
    upload = client.files.create(file=("in.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_until(
        lambda: (
            (b := client.batches.retrieve(batch.id)).status
            in ("completed", "failed", "expired", "cancelled")
            and b
        ),
        timeout=90,
        what=f"batch {batch.id} to end",
    )
    return Batch.model_validate(done.model_dump())


def jobs(db: psycopg.Connection, model: str) -> list[dict]:
    cur = db.execute("SELECT * FROM upstream_jobs WHERE model = %s ORDER BY created_at", (model,))
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def lines(db: psycopg.Connection, batch_id: str) -> list[tuple]:
    return db.execute(
        "SELECT custom_id, status, attempts, executor FROM requests WHERE batch_id = %s"
        " ORDER BY line_no",
        (batch_id,),
    ).fetchall()


def calls(mock_upstream: str, model: str) -> list[str]:
    """The provider calls of a model's deployment, by path (``POST /v1/files``...)."""
    found = httpx.get(f"{mock_upstream}/_mock/attempts/bx-{model}").json()["attempts"]
    return [a["path"] if " " in a["path"] else f"POST {a['path']}" for a in found]


def completed_everywhere(client: openai.OpenAI, batch: Batch, n: int) -> None:
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (n, 0)
    assert batch.output_file_id is not None
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted({o["custom_id"] for o in out})
    assert len(out) == n


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("lost", "upstream_batch_lost"),
        ("failing", "upstream_batch_failed"),
    ],
)
def test_a_job_lost_or_failed_whole_runs_its_rows_again_without_counting(
    client: openai.OpenAI, db: psycopg.Connection, model: str, error: str
):
    done = run_batch(client, model, 3)
    completed_everywhere(client, done, 3)
    first, second = jobs(db, model)
    assert first["counts"] == {"again": 3}
    assert error in (first["last_error"] or json.dumps(first["counts"]) + error)
    assert second["counts"] == {"completed": 3}
    assert all(line[1:] == ("completed", 1, "batch") for line in lines(db, done.id))


def test_an_expired_job_keeps_what_ran_and_runs_the_rest_again(
    client: openai.OpenAI, db: psycopg.Connection
):
    done = run_batch(client, "expiring", 3)
    completed_everywhere(client, done, 3)
    first, second = jobs(db, "expiring")
    assert first["upstream_status"] == "expired"
    assert first["counts"] == {"completed": 1, "again": 2}
    assert second["counts"] == {"completed": 2}
    assert [line[2] for line in lines(db, done.id)] == [1, 1, 1]


def test_unreadable_output_gives_every_row_back_counted(
    client: openai.OpenAI, db: psycopg.Connection
):
    done = run_batch(client, "garbage", 3)
    completed_everywhere(client, done, 3)
    first, _second = jobs(db, "garbage")
    assert first["last_error"] == "upstream_batch_bad_output"
    assert [line[2] for line in lines(db, done.id)] == [2, 2, 2]
    history = db.execute(
        "SELECT attempt_errors FROM requests WHERE batch_id = %s LIMIT 1", (done.id,)
    ).fetchone()
    assert history is not None
    assert history[0][0]["error"]["code"] == "upstream_batch_bad_output"


def test_a_line_missing_from_the_output_runs_again(client: openai.OpenAI, db: psycopg.Connection):
    done = run_batch(client, "dropping", 3)
    completed_everywhere(client, done, 3)
    first, second = jobs(db, "dropping")
    assert first["counts"] == {"completed": 2, "again": 1}
    assert second["rows"] == 1
    assert [line[2] for line in lines(db, done.id)] == [1, 1, 2]


def test_lines_naming_no_row_are_counted_and_ignored(client: openai.OpenAI, db: psycopg.Connection):
    done = run_batch(client, "extra", 3)
    completed_everywhere(client, done, 3)
    (job,) = jobs(db, "extra")
    assert job["counts"] == {"completed": 3, "unknown_lines": 2}


def test_a_submission_stopped_between_upload_and_create_reuses_its_upload(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    done = run_batch(client, "twostep", 2)
    completed_everywhere(client, done, 2)
    (_job,) = jobs(db, "twostep")
    made = calls(mock_upstream, "twostep")
    # one upload; the create refused once, then made again with the stored file after the
    # provider's list showed no job tagged with this one
    assert made.count("POST /v1/files") == 1
    assert made.count("POST /v1/batches") == 2
    assert "GET /v1/batches" in made


def test_a_job_created_but_not_recorded_is_found_again_not_created_twice(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    raw = client.chat.completions.with_raw_response.create(
        model="adopt", messages=[{"role": "user", "content": "once"}], service_tier="flex"
    )
    assert raw.parse().choices[0].message.content == "echo: once"
    made = calls(mock_upstream, "adopt")
    assert made.count("POST /v1/batches") == 1


def test_a_dead_workers_job_is_adopted_by_its_tag(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    rid = client.responses.create(
        model="adopt", input="adopt me", service_tier="flex", background=True
    ).id
    job = wait_until(
        lambda: next((j for j in jobs(db, "adopt") if j["status"] == "running"), None),
        timeout=30,
        what="the job to run at the provider",
    )
    creates = calls(mock_upstream, "adopt").count("POST /v1/batches")
    # The state a worker leaves when it dies after the create, before storing the job's id.
    db.execute(
        "UPDATE upstream_jobs SET status = 'submitting', upstream_batch_id = NULL,"
        " owner = 'wk_dead' WHERE id = %s",
        (job["id"],),
    )
    wait_until(
        lambda: (
            db.execute("SELECT status FROM requests WHERE id = %s", (rid,)).fetchone()
            == ("completed",)
        ),
        timeout=60,
        what="the row to complete",
    )
    (again,) = [j for j in jobs(db, "adopt") if j["id"] == job["id"]]
    assert again["upstream_batch_id"] == job["upstream_batch_id"]
    assert again["counts"] == {"completed": 1}
    assert calls(mock_upstream, "adopt").count("POST /v1/batches") == creates  # no other


def test_a_job_still_running_near_its_rows_windows_is_cancelled_and_the_rest_run_on_flex(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    # the provider runs the first line at once and the second a minute later; 10 s after
    # submission the rows' windows are margin_s from their end
    done = run_batch(client, "tight", 2)
    completed_everywhere(client, done, 2)
    (job,) = jobs(db, "tight")
    assert job["upstream_status"] == "cancelled"
    assert job["counts"] == {"completed": 1, "again": 1}
    assert sorted(line[1:] for line in lines(db, done.id)) == [
        ("completed", 1, "batch"),
        ("completed", 1, "flex"),
    ]
    assert any(path.endswith("/cancel") for path in calls(mock_upstream, "tight"))


def test_answers_from_a_job_fill_the_cache_and_hits_are_never_sent(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    first = run_batch(client, "cached", 3)
    completed_everywhere(client, first, 3)
    sent = calls(mock_upstream, "cached")
    assert sent.count("POST /v1/batches") == 1
    wait_until(
        lambda: (
            db.execute("SELECT count(*) FROM cache_entries WHERE model = 'cached'").fetchone()
            == (3,)
        ),
        timeout=10,
        what="the job's answers to be cached",
    )
    # the same lines again (another batch): answered from the cache, before any job
    again = run_batch(client, "cached", 3)
    completed_everywhere(client, again, 3)
    assert calls(mock_upstream, "cached") == sent
    assert len(jobs(db, "cached")) == 1
    assert [line[1:] for line in lines(db, again.id)] == [("completed", 1, None)] * 3
    hits = db.execute(
        "SELECT count(*) FROM requests WHERE batch_id = %s AND cache = 'hit'", (again.id,)
    ).fetchone()
    assert hits == (3,)
