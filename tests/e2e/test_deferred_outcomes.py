"""A separate worker counts how the deferred rows it ends end, on its own /metrics.

A gateway without a worker accepts background requests, a blocking flex call and a Batch API
batch; a worker process (``--metrics-port``) runs them against the mock provider, some lines
and requests answered with a permanent 400 or a 500 on a model that gives up after one
attempt, and its maintenance expires a row that waited past its window.
``tiergate_deferred_outcomes_total`` on the worker's /metrics shows each with its model, tier,
status, error code and executor; the gateway shows none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import (
    Gateway,
    create_key,
    start_gateway,
    start_metrics_worker,
)
from tests.support.batches import responses_line, start_batch
from tests.support.metrics import deferred_outcomes
from tests.support.waiting import wait_until

TIMEOUT_S = 90.0
HOLD = "deferred-outcomes-slot"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deferred-outcomes")


@pytest.fixture(scope="module")
def config(home: Path, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        home / "tiergate.yaml",
        [
            {"name": "good", "upstream": upstream},
            # A failing upstream is given up after one attempt (no backoff to wait out).
            {"name": "broken", "upstream": upstream, "max_attempts": 1},
            # One call at a time: a held stream keeps the next row queued.
            {"name": "held", "upstream": upstream, "timeout_s": 120, "flex_concurrency": 1},
        ],
        {"heartbeat_s": 0.5, "stalled_after_s": 5, "maintenance_every_s": 1},
    )


@pytest.fixture(scope="module")
def gateway(database: DatabaseURL, config: Path, home: Path) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(), config=config, log=home / "gateway.log", worker=False
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def worker(database: DatabaseURL, config: Path, home: Path) -> Iterator[str]:
    """A worker process serving /metrics; yields that URL."""
    process, url = start_metrics_worker(
        database_url=database.libpq(), config=config, log=home / "worker.log"
    )
    yield url
    process.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway, database: DatabaseURL, worker: str) -> openai.OpenAI:
    key = create_key(database.libpq(), "outcomes")
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=TIMEOUT_S)


def final(client: openai.OpenAI, rid: str) -> Response:
    """The background response ``rid`` once it reached a final status."""
    return wait_until(
        lambda: (r := client.responses.retrieve(rid)).status not in ("queued", "in_progress") and r,
        f"{rid} final",
        TIMEOUT_S,
    )


def test_the_worker_counts_every_deferred_outcome_with_its_labels(
    client: openai.OpenAI, worker: str, gateway: Gateway
):
    ok = [
        client.responses.create(model="good", input=f"fine {i}", background=True) for i in range(2)
    ]
    refused = [
        client.responses.create(model="good", input=f"mock:status=400 refused {i}", background=True)
        for i in range(2)
    ]
    broken = client.responses.create(model="broken", input="mock:status=500 down", background=True)
    blocking = client.responses.create(model="good", input="waits", service_tier="flex")
    assert blocking.status == "completed" and blocking.service_tier == "flex"
    batch = start_batch(
        client,
        [
            responses_line("a", "line a", model="good"),
            responses_line("b", "line b", model="good"),
            responses_line("c", "mock:status=400 line c", model="good"),
        ],
    )

    for done in ok:
        assert final(client, done.id).status == "completed"
    for gone in refused:
        failed = Response.model_validate(final(client, gone.id).model_dump())
        assert failed.status == "failed" and failed.error is not None
    assert final(client, broken.id).status == "failed"
    ended = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
        "the batch completed",
        TIMEOUT_S,
    )
    counts = Batch.model_validate(ended.model_dump()).request_counts
    assert counts is not None and (counts.completed, counts.failed) == (2, 1)

    want = {
        ("good", "background", "completed", "", "direct"): 2.0,
        ("good", "background", "failed", "upstream_400", "direct"): 2.0,
        ("broken", "background", "failed", "upstream_500", "direct"): 1.0,
        ("good", "flex", "completed", "", "direct"): 1.0,
        ("good", "batch", "completed", "", "direct"): 2.0,
        ("good", "batch", "failed", "upstream_400", "direct"): 1.0,
    }
    # Every row is final: the worker counted each once its write took.
    wait_until(lambda: deferred_outcomes(worker) == want, "the worker's counts", TIMEOUT_S)
    # The gateway ran none of them: it exports the family without a sample.
    assert deferred_outcomes(f"{gateway.url}/metrics") == {}


def test_a_row_the_sweep_expires_is_counted_as_expired(
    client: openai.OpenAI,
    worker: str,
    database: DatabaseURL,
    mock_upstream: str,
):
    stream = client.responses.create(
        model="held",
        input=f"mock:hold={HOLD} holds the one slot",
        background=True,
        stream=True,
    )
    expired = ("held", "background", "expired", "request_expired", "none")
    try:
        for event in stream:
            if event.type == "response.in_progress":
                break
        stream.close()
        waiting = client.responses.create(model="held", input="waits", background=True)
        assert client.responses.retrieve(waiting.id).status == "queued"
        with psycopg.connect(database.libpq(), autocommit=True) as db:
            # Its window is over while it waits: the worker's maintenance expires it.
            db.execute(
                "UPDATE requests SET expires_at = now() - interval '1 second'"
                " WHERE id = %s AND status = 'pending'",
                (waiting.id,),
            )
        assert final(client, waiting.id).status == "failed"  # OpenAI shows expiry as failed
        wait_until(
            lambda: deferred_outcomes(worker).get(expired) == 1.0, "the expiry counted", TIMEOUT_S
        )
    finally:
        httpx.post(f"{mock_upstream}/_mock/release/{HOLD}").raise_for_status()
