"""Background responses: accepted at once, polled by id, cancellable, deletable."""

from __future__ import annotations

import time

import openai
import psycopg
import pytest

from tests.e2e.conftest import row

POLL_TIMEOUT_S = 30.0


def poll(client: openai.OpenAI, rid: str, until: set[str]):
    """Retrieve until the status is one of ``until`` (as an SDK user would)."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        response = client.responses.retrieve(rid)
        if response.status in until:
            return response
        time.sleep(0.05)
    raise AssertionError(f"{rid} never reached {until}")


@pytest.mark.parametrize("tier", ["flex", "default"])
def test_background_returns_queued_then_completes(client: openai.OpenAI, tier: str, db):
    created = client.responses.create(
        model="remote",
        input="in the background",
        background=True,
        service_tier=tier,
        metadata={"job": "nightly"},
    )
    assert created.status == "queued"
    assert created.background is True and created.output == []
    assert created.id.startswith("resp_")
    assert created.metadata == {"job": "nightly"}
    done = poll(client, created.id, {"completed", "failed"})
    assert done.status == "completed"
    assert done.output_text == "echo: in the background"
    assert done.usage is not None and done.usage.total_tokens == 7
    assert done.service_tier == tier and done.background is True
    job = db.execute(
        "SELECT queue_name, priority FROM procrastinate_jobs WHERE id = %s",
        (row(db, created.id)["job_id"],),
    ).fetchone()
    assert job == (("flex", 0) if tier == "flex" else ("realtime", 100))


def test_background_failure_is_shown_in_error(client: openai.OpenAI):
    created = client.responses.create(
        model="remote", input="mock:status=404", background=True, service_tier="flex"
    )
    done = poll(client, created.id, {"completed", "failed"})
    assert done.status == "failed"
    assert done.error is not None and done.error.code == "upstream_404"


def wait_job_settled(db: psycopg.Connection, job_id: int) -> str:
    """Wait until procrastinate is done with the job (neither queued nor running)."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        (status,) = db.execute(
            "SELECT status FROM procrastinate_jobs WHERE id = %s", (job_id,)
        ).fetchone()
        if status not in ("todo", "doing"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {status}")


def test_cancel_running_background_work(client: openai.OpenAI, db: psycopg.Connection):
    created = client.responses.create(
        model="remote", input="mock:sleep_ms=4000", background=True, service_tier="flex"
    )
    poll(client, created.id, {"in_progress"})
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent
    # The running job is aborted; once procrastinate has settled it, the row is unchanged.
    assert wait_job_settled(db, row(db, created.id)["job_id"]) in ("aborted", "succeeded")
    assert row(db, created.id)["status"] == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"


def test_cancel_right_after_create_is_never_overwritten(client: openai.OpenAI, db):
    created = client.responses.create(
        model="other", input="mock:sleep_ms=500", background=True, service_tier="flex"
    )
    assert client.responses.cancel(created.id).status == "cancelled"
    wait_job_settled(db, row(db, created.id)["job_id"])
    tracked = row(db, created.id)
    assert tracked["status"] == "cancelled"
    assert tracked["response_body"] is None


def test_cancel_non_background_is_400(client: openai.OpenAI):
    raw = client.responses.with_raw_response.create(model="mock", input="not background")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(raw.headers["x-request-id"])


def test_delete(client: openai.OpenAI):
    created = client.responses.create(model="mock", input="delete me", background=True)
    poll(client, created.id, {"completed"})
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_retrieve_unknown_id_is_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_' OR '1'='1")
