"""The ``batch`` executor, end to end: tiergate A whose deployment's upstream is a second
tiergate B's Batch API (B in front of the mock provider).

Deferred rows at A (blocking flex requests, Batch API lines) are gathered into jobs at B:
a file uploaded to B's ``/v1/files``, a batch created at B's ``/v1/batches`` tagged with A's
job id, polled, its output and error files read, each of A's rows finished from its own line.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.postgres import DatabaseFactory
from app.testing.processes import Gateway, create_key, start_gateway
from tests.e2e.conftest import row
from tests.support.waiting import wait_until

BATCH = {
    "turnaround_s": 20,
    "margin_s": 5,
    "gather_s": 2,
    "poll_min_s": 0.2,
    "poll_max_s": 0.5,
}
LINES = 1000  # at most two provider jobs for them
FAST = {"retry_base_s": 0.05, "retry_max_s": 0.2, "maintenance_every_s": 1}


@pytest.fixture(scope="module")
def inner_database(databases: DatabaseFactory) -> DatabaseURL:
    return databases.create()


@pytest.fixture(scope="module")
def inner(
    inner_database: DatabaseURL, mock_upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Tiergate B: the provider of A's deployment, in front of the mock."""
    config = write_config(
        tmp_path_factory.mktemp("inner") / "tiergate.yaml",
        [
            {
                "name": "inner",
                "upstream": f"{mock_upstream}/v1",
                "max_attempts": 1,
                "flex_concurrency": 1,
            }
        ],
        {**FAST, "health": {"failures_to_trip": 1000}},
    )
    gw = start_gateway(
        database_url=inner_database.libpq(),
        config=config,
        log=tmp_path_factory.mktemp("logs") / "inner.log",
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def inner_key(inner_database: DatabaseURL) -> str:
    return create_key(inner_database.libpq(), "outer-gateway")


@pytest.fixture(scope="module")
def inner_client(inner: Gateway, inner_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=inner.api, api_key=inner_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, inner: Gateway) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "paid",
                "deployments": [
                    {
                        "name": "b",
                        "upstream": inner.api,
                        "upstream_model": "inner",
                        "api_key_env": "INNER_KEY",
                        "executor": "batch",
                        "batch": BATCH,
                        "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0, "batch": 0.5},
                    }
                ],
                "max_attempts": 3,
            }
        ],
        {**FAST, "health": {"failures_to_trip": 1000}, "max_batch_lines": 2000},
    )


@pytest.fixture(scope="module")
def gateway(
    database: DatabaseURL,
    gateway_config: Path,
    inner_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=gateway_config,
        log=tmp_path_factory.mktemp("logs") / "outer.log",
        env={"INNER_KEY": inner_key},
    )
    yield gw
    gw.process.stop()


def jobs_of(db: psycopg.Connection, since_rows: int = 0) -> list[dict]:
    cur = db.execute("SELECT * FROM upstream_jobs ORDER BY created_at")
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()][since_rows:]


def test_a_blocking_flex_request_runs_in_a_job_of_the_providers_batch_api(
    client: openai.OpenAI, db: psycopg.Connection, inner_client: openai.OpenAI
):
    raw = client.responses.with_raw_response.create(
        model="paid", input="through a batch", service_tier="flex"
    )
    response = Response.model_validate(raw.parse().model_dump())
    assert response.output_text == "echo: through a batch"
    assert response.model == "paid"
    tracked = row(db, raw.headers["x-request-id"])
    assert tracked["executor"] == "batch" and tracked["status"] == "completed"
    assert tracked["deployment"] == "b" and tracked["attempts"] == 1
    job = next(j for j in jobs_of(db) if j["id"] == tracked["upstream_job_id"])
    assert job["status"] == "ended" and job["upstream_status"] == "completed"
    assert job["rows"] == 1 and job["counts"] == {"completed": 1}
    # B has the job, tagged with A's id, and priced at the batch path's multiplier at A
    upstream = Batch.model_validate(
        inner_client.batches.retrieve(job["upstream_batch_id"]).model_dump()
    )
    assert upstream.metadata == {"tiergate_job": job["id"]}
    assert upstream.request_counts is not None and upstream.request_counts.completed == 1
    expected = (tracked["input_tokens"] + 2 * tracked["output_tokens"]) / 1_000_000 * 0.5
    assert float(tracked["cost_usd"]) == pytest.approx(expected)


def _lines(n: int, text: str = "line {i}") -> bytes:
    body = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "paid", "input": text.format(i=i)},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(item) + "\n" for item in body).encode()


def _run_batch(client: openai.OpenAI, content: bytes) -> Batch:
    upload = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h"
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


def test_a_1000_line_batch_becomes_at_most_two_provider_jobs_and_completes_once(
    client: openai.OpenAI, db: psycopg.Connection
):
    before = len(jobs_of(db))
    done = _run_batch(client, _lines(LINES))
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
    assert done.output_file_id is not None
    out = client.files.content(done.output_file_id).text.splitlines()
    answers = {json.loads(x)["custom_id"]: json.loads(x)["response"]["body"] for x in out}
    assert len(out) == LINES and set(answers) == {f"c{i}" for i in range(LINES)}
    assert all(
        answers[f"c{i}"]["output"][0]["content"][0]["text"] == f"echo: line {i}"
        for i in range(LINES)
    )
    new = jobs_of(db, before)
    assert 1 <= len(new) <= 2 and sum(j["rows"] for j in new) == LINES
    runs = db.execute(
        "SELECT count(*), sum(attempts), count(*) FILTER (WHERE executor = 'batch')"
        " FROM requests WHERE batch_id = %s",
        (done.id,),
    ).fetchone()
    assert runs == (LINES, LINES, LINES)


def test_line_errors_at_the_provider_fail_or_run_again(
    client: openai.OpenAI, db: psycopg.Connection
):
    content = (
        _lines(2)
        + json.dumps(
            {
                "custom_id": "bad",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "paid", "input": "mock:status=400 refused"},
            }
        ).encode()
        + b"\n"
        + json.dumps(
            {
                "custom_id": "flaky",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "paid", "input": "mock:status=503,fail_times=1,key=bx-flaky x"},
            }
        ).encode()
        + b"\n"
    )
    done = _run_batch(client, content)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    rows = {
        r[0]: r[1:]
        for r in db.execute(
            "SELECT custom_id, status, attempts, error->>'code' FROM requests WHERE batch_id = %s",
            (done.id,),
        ).fetchall()
    }
    # a final 400 at the provider fails the line at once; a 503 there runs again (next job)
    assert rows["bad"] == ("failed", 1, "upstream_400")
    assert rows["flaky"] == ("completed", 2, None)


def test_a_job_cancelled_at_the_provider_runs_its_rows_again(
    client: openai.OpenAI, db: psycopg.Connection, inner_client: openai.OpenAI
):
    before = len(jobs_of(db))
    # B runs one line at a time: the slow first line is in flight when the job is cancelled
    # there, the second has not started (B ends it as batch_cancelled in its error file)
    slow = client.responses.create(
        model="paid", input="mock:sleep_ms=3000 slow one", service_tier="flex", background=True
    ).id
    waiting = client.responses.create(
        model="paid", input="second one", service_tier="flex", background=True
    ).id
    job = wait_until(
        lambda: next((j for j in jobs_of(db, before) if j["upstream_batch_id"]), None),
        timeout=30,
        what="the job to reach the provider",
    )
    assert job["rows"] == 2
    inner_client.batches.cancel(job["upstream_batch_id"])
    for rid, text in ((slow, "slow one"), (waiting, "echo: second one")):
        final = wait_until(
            lambda rid=rid: (
                (r := client.responses.retrieve(rid)).status not in ("queued", "in_progress") and r
            ),
            timeout=60,
            what="the response to end",
        )
        assert final.status == "completed" and final.output_text.endswith(text)
    # what B finished before the cancel is kept; the rest ran again, in a new job, without
    # using up an attempt
    first = next(j for j in jobs_of(db, before) if j["id"] == job["id"])
    assert first["upstream_status"] == "cancelled"
    assert first["counts"] == {"completed": 1, "again": 1}
    second = row(db, waiting)
    assert second["attempts"] == 1 and second["upstream_job_id"] != job["id"]
    assert row(db, slow)["upstream_job_id"] == job["id"]


def test_cancelling_a_batch_cancels_its_lines_and_the_providers_job(
    client: openai.OpenAI, db: psycopg.Connection, inner_client: openai.OpenAI
):
    before = len(jobs_of(db))
    # B runs one line at a time, 1.5 s each: the job is still running when A's batch is cancelled
    upload = client.files.create(
        file=("in.jsonl", io.BytesIO(_lines(4, "mock:sleep_ms=1500 slow {i}"))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h"
    )
    job = wait_until(
        lambda: next((j for j in jobs_of(db, before) if j["upstream_batch_id"]), None),
        timeout=30,
        what="the job to reach the provider",
    )
    client.batches.cancel(batch.id)
    done = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status in ("cancelled", "completed") and b,
        timeout=30,
        what="the batch to end",
    )
    done = Batch.model_validate(done.model_dump())
    assert done.status == "cancelled" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 4)
    statuses = db.execute(
        "SELECT DISTINCT status, error->>'code' FROM requests WHERE batch_id = %s", (batch.id,)
    ).fetchall()
    assert statuses == [("cancelled", "batch_cancelled")]
    # none of the job's rows is live any more: the job is cancelled at the provider too
    at_b = wait_until(
        lambda: (
            (b := inner_client.batches.retrieve(job["upstream_batch_id"])).status
            in ("cancelling", "cancelled")
            and b
        ),
        timeout=30,
        what="the provider's job to be cancelled",
    )
    assert at_b.request_counts is not None and at_b.request_counts.completed < 4


def test_a_job_expired_at_the_provider_keeps_what_ran_and_runs_the_rest_again(
    client: openai.OpenAI, db: psycopg.Connection, inner_database: DatabaseURL
):
    before = len(jobs_of(db))
    # as in the cancel test: B runs the slow line while the second waits in its queue
    slow = client.responses.create(
        model="paid", input="mock:sleep_ms=3000 slow two", service_tier="flex", background=True
    ).id
    waiting = client.responses.create(
        model="paid", input="second two", service_tier="flex", background=True
    ).id
    job = wait_until(
        lambda: next((j for j in jobs_of(db, before) if j["upstream_batch_id"]), None),
        timeout=30,
        what="the job to reach the provider",
    )
    assert job["rows"] == 2
    # B's window for the job ends now: B's own sweep expires its queued line and ends the
    # job `expired`, with the line that ran in its output file
    with psycopg.connect(inner_database.libpq(), autocommit=True) as inner_db:
        wait_until(
            lambda: inner_db.execute(
                "SELECT 1 FROM requests WHERE batch_id = %s AND status = 'in_progress'",
                (job["upstream_batch_id"],),
            ).fetchone(),
            timeout=30,
            what="B to run the slow line",
        )
        ended = inner_db.execute(
            "UPDATE batches SET expires_at = now() WHERE id = %s RETURNING id",
            (job["upstream_batch_id"],),
        ).fetchall()
    assert len(ended) == 1
    for rid, text in ((slow, "slow two"), (waiting, "echo: second two")):
        final = wait_until(
            lambda rid=rid: (
                (r := client.responses.retrieve(rid)).status not in ("queued", "in_progress") and r
            ),
            timeout=60,
            what="the response to end",
        )
        final = Response.model_validate(final.model_dump())
        assert final.status == "completed" and final.output_text.endswith(text)
    first = next(j for j in jobs_of(db, before) if j["id"] == job["id"])
    assert first["upstream_status"] == "expired"
    assert first["counts"] == {"completed": 1, "again": 1}
    again = row(db, waiting)
    assert again["attempts"] == 1 and again["upstream_job_id"] not in (None, job["id"])
    assert row(db, slow)["upstream_job_id"] == job["id"]


def test_cancelling_a_background_response_cancels_the_providers_job(
    client: openai.OpenAI, db: psycopg.Connection, inner_client: openai.OpenAI
):
    before = len(jobs_of(db))
    rid = client.responses.create(
        model="paid", input="mock:sleep_ms=5000 never wanted", service_tier="flex", background=True
    ).id
    job = wait_until(
        lambda: next((j for j in jobs_of(db, before) if j["upstream_batch_id"]), None),
        timeout=30,
        what="the job to reach the provider",
    )
    cancelled = Response.model_validate(client.responses.cancel(rid).model_dump())
    assert cancelled.status == "cancelled"
    # the job's only row is no longer live: the job is cancelled at B, and ends at A
    at_b = wait_until(
        lambda: (
            (b := inner_client.batches.retrieve(job["upstream_batch_id"])).status == "cancelled"
            and b
        ),
        timeout=30,
        what="the provider's job to be cancelled",
    )
    assert Batch.model_validate(at_b.model_dump()).status == "cancelled"
    ended = wait_until(
        lambda: next(
            (j for j in jobs_of(db, before) if j["id"] == job["id"] and j["status"] == "ended"),
            None,
        ),
        timeout=30,
        what="the job to end at A",
    )
    assert ended["upstream_status"] == "cancelled"
    # the answer that never came does not bring the response back
    final = row(db, rid)
    assert (final["status"], final["attempts"]) == ("cancelled", 1)
    assert client.responses.retrieve(rid).status == "cancelled"
