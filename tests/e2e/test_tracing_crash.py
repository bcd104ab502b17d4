"""A flex request whose worker is SIGKILLed mid-call and that another worker process runs
again stays one trace (docs/observability.md): the row keeps the trace, whichever worker
claims it continues it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.processes import Gateway, Process, create_key, start_gateway, start_worker
from tests.support.otlp import CLIENT, CONSUMER, SERVER, HttpReceiver, Received
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    received = HttpReceiver()
    yield received
    received.close()


@pytest.fixture(scope="module")
def otel_env(receiver: HttpReceiver) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture(scope="module")
def config(gateway_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The e2e config, with a dead worker's work rescued within seconds."""
    data = yaml.safe_load(gateway_config.read_text())
    data["limits"].update({"heartbeat_s": 0.5, "stalled_after_s": 2, "maintenance_every_s": 1})
    path = tmp_path_factory.mktemp("config") / "crash.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def gateway(
    database: DatabaseURL, config: Path, otel_env: dict[str, str], logs: Path
) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=config,
        log=logs / "gateway.log",
        worker=False,
        env=otel_env,
    )
    yield gw
    gw.process.stop()


def recorded(mock_upstream: str, name: str) -> list[dict[str, Any]]:
    attempts: list[dict[str, Any]] = httpx.get(f"{mock_upstream}/_mock/attempts/{name}").json()[
        "attempts"
    ]
    return attempts


def test_a_retry_by_another_worker_after_a_sigkill_stays_in_the_trace(
    gateway: Gateway,
    database: DatabaseURL,
    config: Path,
    otel_env: dict[str, str],
    logs: Path,
    receiver: HttpReceiver,
    mock_upstream: str,
):
    client = openai.OpenAI(
        base_url=gateway.api,
        api_key=create_key(database.libpq(), "crash"),
        max_retries=0,
        timeout=60,
    )
    first = start_worker(
        database_url=database.libpq(), config=config, log=logs / "first.log", env=otel_env
    )
    second: Process | None = None
    try:
        # The first call hangs for a minute (the mock then fails it); the second is answered.
        name = f"crash-{secrets.token_hex(4)}"
        accepted = client.responses.create(
            model="other",
            input=f"mock:key={name},sleep_ms=60000,fail_times=1 hello",
            service_tier="flex",
            background=True,
        )
        [hanging] = wait_until(lambda: recorded(mock_upstream, name), "the first worker's call")
        trace_id = hanging["headers"]["traceparent"].split("-")[1]

        def first_exported() -> list[Received] | None:
            spans = receiver.of_trace(trace_id)
            names = {s.name for s in spans}
            return spans if {"queue wait", "POST /v1/responses"} <= names else None

        # What the first worker ends before its call (the queue wait) is exported; then it dies.
        exported = wait_until(first_exported, "the queue wait")
        [queued] = [s for s in exported if s.name == "queue wait"]
        first.kill()
        second = start_worker(
            database_url=database.libpq(), config=config, log=logs / "second.log", env=otel_env
        )

        def finished() -> Response | None:
            found = client.responses.retrieve(accepted.id)
            return found if found.status not in ("queued", "in_progress") else None

        done = Response.model_validate(wait_until(finished, "the rescued retry", 60).model_dump())
        assert done.status == "completed"

        # Both calls the upstream saw are in the trace the gateway started.
        calls = recorded(mock_upstream, name)
        assert len(calls) == 2
        traceparents = [call["headers"]["traceparent"] for call in calls]
        assert {tp.split("-")[1] for tp in traceparents} == {trace_id}

        def retried() -> list[Received] | None:
            spans = receiver.of_trace(trace_id)
            return spans if {CONSUMER, CLIENT} <= {s.kind for s in spans} else None

        spans = wait_until(retried, "the second worker's spans", timeout=30)
        [server] = [s for s in spans if s.kind == SERVER]
        [attempt] = [s for s in spans if s.kind == CONSUMER]
        [call] = [s for s in spans if s.kind == CLIENT]
        # The first worker's attempt 1 (its queue wait; its attempt and call spans died with
        # it: the SDK exports a span when it ends) and the second worker's attempt 2.
        assert queued.attributes["tiergate.attempt"] == 1
        assert attempt.attributes["tiergate.attempt"] == 2
        assert queued.attributes["tiergate.request_id"] == accepted.id
        assert attempt.attributes["tiergate.request_id"] == accepted.id
        assert queued.resource["service.instance.id"] != attempt.resource["service.instance.id"]
        assert queued.parent_id == attempt.parent_id == server.span_id
        assert attempt.attributes["tiergate.status"] == "completed"
        # The second call is the second worker's client span; the first was another span.
        assert traceparents[1].split("-")[2] == call.span_id
        assert traceparents[0].split("-")[2] != call.span_id
    finally:
        first.kill()
        if second is not None:
            second.stop()
