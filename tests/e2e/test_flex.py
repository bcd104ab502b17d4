"""Flex calls: queued durably, run by the worker, blocking clients answered on completion."""

from __future__ import annotations

import contextlib

import openai
import psycopg
import pytest

from tests.e2e.conftest import row


def test_blocking_flex_response(client: openai.OpenAI, db: psycopg.Connection):
    raw = client.responses.with_raw_response.create(
        model="remote", input="flex please", service_tier="flex"
    )
    response = raw.parse()
    rid = raw.headers["x-request-id"]
    assert response.id == rid
    assert response.output_text == "echo: flex please"
    assert response.service_tier == "flex"
    tracked = row(db, rid)
    assert tracked["status"] == "completed" and tracked["attempts"] == 1
    # a request is not a job: a worker claimed the row itself
    assert tracked["job_id"] is None and tracked["batch_id"] is None
    assert tracked["claimed_by"].startswith("wk_")
    fetched = client.responses.retrieve(rid)
    assert fetched.status == "completed" and fetched.output_text == "echo: flex please"
    assert fetched.service_tier == "flex"


def test_flex_chat_completion_readable_by_id(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "flex chat"}], service_tier="flex"
    )
    assert completion.choices[0].message.content == "echo: flex chat"
    assert completion.service_tier == "flex"
    assert completion.id.startswith("chatcmpl-")
    again = client.chat.completions.retrieve(completion.id)
    assert again.choices[0].message.content == "echo: flex chat"
    as_response = client.responses.retrieve(completion.id)
    assert as_response.status == "completed"
    assert as_response.output_text == "echo: flex chat"


def test_flex_embeddings(client: openai.OpenAI):
    flex = client.embeddings.create(
        model="remote", input="vector me", extra_body={"service_tier": "flex"}
    )
    realtime = client.embeddings.create(model="remote", input="vector me")
    assert flex.data[0].embedding == realtime.data[0].embedding


def test_flex_retries_transient_upstream_errors(client: openai.OpenAI, db: psycopg.Connection):
    raw = client.responses.with_raw_response.create(
        model="remote", input="mock:status=503,fail_times=2,key=flaky-1", service_tier="flex"
    )
    assert raw.parse().status == "completed"
    assert row(db, raw.headers["x-request-id"])["attempts"] == 3


def test_flex_final_client_error_is_not_retried(client: openai.OpenAI, db: psycopg.Connection):
    try:
        client.responses.create(model="remote", input="mock:status=422", service_tier="flex")
    except openai.UnprocessableEntityError as exc:
        rid = exc.response.headers["x-request-id"]
    else:
        raise AssertionError("expected the upstream's 422")
    tracked = row(db, rid)
    assert tracked["status"] == "failed" and tracked["attempts"] == 1
    assert tracked["error"]["code"] == "upstream_422"


def test_flex_gives_up_after_max_attempts(client: openai.OpenAI, db: psycopg.Connection):
    try:
        client.responses.create(model="remote", input="mock:status=500", service_tier="flex")
    except openai.InternalServerError as exc:
        assert exc.response.headers["x-should-retry"] == "false"
        rid = exc.response.headers["x-request-id"]
    else:
        raise AssertionError("expected a 502 after retries")
    tracked = row(db, rid)
    assert tracked["status"] == "failed" and tracked["attempts"] == 3  # max_attempts
    assert tracked["error"]["code"] == "upstream_500"


def test_admin_views_answer_in_sql(client: openai.OpenAI, db: psycopg.Connection):
    with contextlib.suppress(openai.APIStatusError):
        client.responses.create(model="remote", input="mock:status=418", service_tier="flex")
    failures = db.execute(
        "SELECT requests FROM tiergate_failures WHERE error_code = 'upstream_418'"
    ).fetchone()
    assert failures is not None and failures[0] >= 1
    # A flex request is a row, not a batch: the batch view lists Batch API batches only.
    assert db.execute("SELECT count(*) FROM batches WHERE kind = 'single'").fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM tiergate_batch_progress WHERE kind <> 'file'"
    ).fetchone() == (0,)
    usage = db.execute("SELECT sum(total_tokens) FROM tiergate_usage_by_key").fetchone()
    assert usage[0] > 0
    db.execute("SELECT * FROM tiergate_queue_depth").fetchall()


def test_nul_characters_are_a_400_not_a_500(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="mock", input="nul \u0000 here", service_tier="flex")
