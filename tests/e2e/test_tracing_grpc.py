"""Traces exported by OTLP/gRPC (``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``) to a receiver in the
test that implements the collector's ``TraceService.Export``: one flex request run by a
separate worker process is one trace."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.processes import create_key, start_gateway, start_worker
from tests.support.otlp import CLIENT, CONSUMER, SERVER, GrpcReceiver, Received
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def receiver() -> Iterator[GrpcReceiver]:
    received = GrpcReceiver()
    yield received
    received.close()


@pytest.fixture(scope="module")
def client(
    database: DatabaseURL,
    gateway_config: Path,
    receiver: GrpcReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[openai.OpenAI]:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    logs = tmp_path_factory.mktemp("logs")
    url = database.libpq()
    gw = start_gateway(
        database_url=url, config=gateway_config, log=logs / "gw.log", worker=False, env=env
    )
    worker = start_worker(database_url=url, config=gateway_config, log=logs / "w.log", env=env)
    yield openai.OpenAI(base_url=gw.api, api_key=create_key(url, "grpc"), max_retries=0, timeout=60)
    worker.stop()
    gw.process.stop()


def test_one_flex_request_is_one_trace_over_grpc(
    client: openai.OpenAI, receiver: GrpcReceiver, mock_upstream: str
):
    name = f"grpc-{secrets.token_hex(4)}"
    answer = client.responses.create(
        model="remote", input=f"mock:key={name} hello", service_tier="flex"
    )
    assert Response.model_validate(answer.model_dump()).status == "completed"
    [sent] = httpx.get(f"{mock_upstream}/_mock/attempts/{name}").json()["attempts"]
    _, trace_id, parent_id, _ = sent["headers"]["traceparent"].split("-")

    def whole() -> list[Received] | None:
        spans = receiver.of_trace(trace_id)
        return spans if {SERVER, CONSUMER, CLIENT} <= {s.kind for s in spans} else None

    spans = wait_until(whole, "the trace over gRPC", timeout=30)
    [server] = [s for s in spans if s.kind == SERVER]
    [attempt] = [s for s in spans if s.kind == CONSUMER]
    [call] = [s for s in spans if s.kind == CLIENT]
    [queued] = [s for s in spans if s.name == "queue wait"]
    assert server.resource["tiergate.role"] == "gateway"
    assert attempt.resource["tiergate.role"] == "worker"
    assert attempt.parent_id == queued.parent_id == server.span_id
    assert call.parent_id == attempt.span_id and call.span_id == parent_id
    assert attempt.attributes["tiergate.request_id"] == answer.id
    assert call.attributes["gen_ai.usage.output_tokens"] > 0
