"""Background responses: accepted at once, polled by id, cancellable, deletable."""

from __future__ import annotations

import time

import openai
import psycopg
import pytest

from app.testing.processes import Gateway
from tests.e2e.conftest import row
from tests.support.metrics import deferred_outcomes
from tests.support.waiting import wait_until

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
    # Background calls of the default tier are claimed before flex work.
    assert row(db, created.id)["priority"] == (0 if tier == "flex" else 100)


def test_background_failure_is_shown_in_error(client: openai.OpenAI, gateway: Gateway):
    metrics = f"{gateway.url}/metrics"  # serve's in-process worker counts on the one /metrics
    counted = ("remote", "background", "failed", "upstream_404", "direct")
    before = deferred_outcomes(metrics).get(counted, 0.0)
    created = client.responses.create(
        model="remote", input="mock:status=404", background=True, service_tier="flex"
    )
    done = poll(client, created.id, {"completed", "failed"})
    assert done.status == "failed"
    wait_until(
        lambda: deferred_outcomes(metrics).get(counted) == before + 1,
        "the failure counted by the in-process worker",
        POLL_TIMEOUT_S,
    )
    # OpenAI's code on the object; the row's (the provider's own, when it gave one) leads the
    # message.
    assert done.error is not None and done.error.code == "server_error"
    assert done.error.message == "not_found: mock status 404"


def wait_worker_done(gateway: Gateway, db: psycopg.Connection, request_id: str) -> None:
    """Wait until no worker can still be calling the upstream for a cancelled request: it
    was never claimed, or the worker abandoned its call (it says so in its log)."""
    if row(db, request_id)["attempts"] == 0:
        return  # cancelled while queued: never claimed, and never will be
    wait_until(
        lambda: (
            f"request {request_id} is final: its upstream call is abandoned"
            in gateway.process.log.read_text()
        ),
        "the worker to abandon the cancelled call",
        timeout=POLL_TIMEOUT_S,
    )


def test_cancel_running_background_work(
    client: openai.OpenAI, db: psycopg.Connection, gateway: Gateway
):
    created = client.responses.create(
        model="remote", input="mock:sleep_ms=4000", background=True, service_tier="flex"
    )
    poll(client, created.id, {"in_progress"})
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent
    # The running call is abandoned at once (not after the mock's 4 s); the row is unchanged.
    started = time.monotonic()
    wait_worker_done(gateway, db, created.id)
    assert time.monotonic() - started < 3.0
    assert row(db, created.id)["status"] == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"


def test_cancel_right_after_create_is_never_overwritten(
    client: openai.OpenAI, db: psycopg.Connection, gateway: Gateway
):
    created = client.responses.create(
        model="other", input="mock:sleep_ms=500", background=True, service_tier="flex"
    )
    assert client.responses.cancel(created.id).status == "cancelled"
    wait_worker_done(gateway, db, created.id)
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
