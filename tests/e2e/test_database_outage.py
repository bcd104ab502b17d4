"""A database restart under load: clear 503s while it is down, then everything heals by
itself and nothing accepted before the restart is lost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest

from app.store.dburl import DatabaseURL
from app.store.embedded import EmbeddedPostgres
from app.testing.config import write_config
from app.testing.processes import Gateway, create_key, start_gateway
from tests.support.batches import responses_line, start_batch
from tests.support.waiting import wait_until

HEAL_TIMEOUT_S = 90.0
BLOCKING = 20
BACKGROUND = 20
BATCH_LINES = 300
OUTAGE_S = 3.0


@pytest.fixture(scope="module")
def own_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedPostgres, DatabaseURL]]:
    """A server of this module's own, so stopping it disturbs no other test."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("outage-home"))
    url = server.start()
    yield server, url
    server.start()  # leave it running for the final stop
    server.stop()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def outage_gateway(
    own_server: tuple[EmbeddedPostgres, DatabaseURL],
    tmp_path_factory: pytest.TempPathFactory,
    mock_upstream: str,
    logs: Path,
) -> Iterator[Gateway]:
    _, url = own_server
    config = write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "remote",
                "upstream": f"{mock_upstream}/v1",
                "flex_concurrency": 16,
                "timeout_s": 10,
            }
        ],
        {
            "heartbeat_s": 0.5,
            "stalled_after_s": 2,
            "maintenance_every_s": 1,
            "waiter_recheck_s": 1,
            "batch_chunk": 20,
        },
    )
    gw = start_gateway(database_url=url.libpq(), config=config, log=logs / "gw-outage.log")
    yield gw
    gw.process.stop()


def in_threads(calls: list[Callable[[], Any]]) -> tuple[list[threading.Thread], list[Any]]:
    """Run each call in a thread of its own; results (or exceptions) land in the list."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return threads, results


def test_restart_under_load_gives_503_then_heals_and_loses_nothing(
    own_server: tuple[EmbeddedPostgres, DatabaseURL], outage_gateway: Gateway, logs: Path
):
    server, url = own_server
    client = openai.OpenAI(
        base_url=outage_gateway.api,
        api_key=create_key(url.libpq(), "o"),
        max_retries=0,
        timeout=120,
    )
    batch = start_batch(
        client,
        [responses_line(f"o-{i}", f"mock:sleep_ms=100 line {i}") for i in range(BATCH_LINES)],
    )
    file_id = batch.input_file_id
    background = [
        client.responses.create(
            model="remote", input=f"mock:sleep_ms=800 bg {i}", background=True,
            service_tier="flex",
        ).id
        for i in range(BACKGROUND)
    ]  # fmt: skip
    waiting, answers = in_threads(
        [
            lambda i=i: client.responses.create(
                model="remote", input=f"mock:sleep_ms=800 flex {i}", service_tier="flex"
            )
            for i in range(BLOCKING)
        ]
    )
    admin = httpx.Client(timeout=10)

    def running_flex() -> int:  # accepted blocking flex requests that a worker is running
        with psycopg.connect(url.libpq(), autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM requests WHERE service_tier = 'flex' AND NOT background"
                " AND status = 'in_progress'"
            ).fetchone()[0]

    wait_until(
        lambda: (
            running_flex() >= 5 and client.batches.retrieve(batch.id).request_counts.completed > 0
        ),
        "blocking flex calls in flight and the batch under way",
        HEAL_TIMEOUT_S,
    )

    server.stop()
    try:
        ready = admin.get(outage_gateway.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "database_unavailable"
        started = time.monotonic()
        attempts = [
            lambda: client.responses.create(model="remote", input="realtime while down"),
            lambda: client.responses.create(model="remote", input="flex", service_tier="flex"),
            lambda: client.responses.create(model="remote", input="bg", background=True),
            lambda: client.responses.retrieve(background[0]),
            lambda: client.batches.retrieve(batch.id),
            lambda: client.batches.list(),
            lambda: client.files.list(),
            lambda: client.files.content(file_id),
        ]
        threads, refused = in_threads(attempts * 3)
        for thread in threads:
            thread.join(30)
        for outcome in refused:
            assert isinstance(outcome, openai.InternalServerError), outcome
            assert outcome.status_code == 503 and outcome.code == "service_unavailable"
            assert outcome.response.headers.get("retry-after")
        assert time.monotonic() - started < 25  # clear answers, not hangs
        # The outage itself lasts a while: in-flight calls end and fail to store their result.
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
    finally:
        server.start()

    wait_until(
        lambda: admin.get(outage_gateway.url + "/readyz").status_code == 200,
        "readyz to recover",
        HEAL_TIMEOUT_S,
    )
    # Every client that was waiting through the restart gets its answer.
    for thread in waiting:
        thread.join(HEAL_TIMEOUT_S)
    assert [getattr(a, "output_text", a) for a in answers] == [
        f"echo: mock:sleep_ms=800 flex {i}" for i in range(BLOCKING)
    ]
    healed = client.with_options(max_retries=3)  # a stale pooled connection may cost one 503
    assert healed.responses.create(model="remote", input="after").output_text == "echo: after"
    for request_id in background:
        wait_until(
            lambda r=request_id: healed.responses.retrieve(r).status == "completed",
            f"background request {request_id}",
            HEAL_TIMEOUT_S,
        )
    wait_until(
        lambda: healed.batches.retrieve(batch.id).status == "completed", "the batch", HEAL_TIMEOUT_S
    )
    done = healed.batches.retrieve(batch.id)
    assert done.request_counts is not None and done.request_counts.completed == BATCH_LINES
    assert done.output_file_id is not None
    output = healed.files.content(done.output_file_id).read().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == sorted(
        f"o-{i}" for i in range(BATCH_LINES)
    )
    assert "Traceback" not in (logs / "gw-outage.log").read_text()
