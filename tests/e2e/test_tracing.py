"""One trace per flex request across processes (docs/observability.md): a gateway without its
worker and a separate worker export to an OTLP/HTTP receiver in the test; the mock upstream
records the ``traceparent`` it was sent."""

from __future__ import annotations

import gzip
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from app.store.dburl import DatabaseURL
from app.testing.postgres import DatabaseFactory
from app.testing.processes import Gateway, Process, create_key, start_gateway, start_worker
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Received:
    """One span as the receiver got it, with its resource's attributes."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


class Receiver:
    """A tiny OTLP/HTTP receiver: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.paths: list[str] = []
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    receiver.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        resource = {
                            a.key: _value(a.value) for a in resource_spans.resource.attributes
                        }
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append(
                                    Received(
                                        trace_id=span.trace_id.hex(),
                                        span_id=span.span_id.hex(),
                                        parent_id=span.parent_span_id.hex(),
                                        name=span.name,
                                        kind=span.kind,
                                        attributes={
                                            a.key: _value(a.value) for a in span.attributes
                                        },
                                        resource=resource,
                                    )
                                )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_trace(self, trace_id: str) -> list[Received]:
        return [span for span in list(self.spans) if span.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    received = Receiver()
    yield received
    received.close()


@pytest.fixture(scope="module")
def otel_env(receiver: Receiver) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture(scope="module")
def traced_gateway(
    database: DatabaseURL,
    gateway_config: Path,
    otel_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("logs")
    gw = start_gateway(
        database_url=database.libpq(),
        config=gateway_config,
        log=logs / "traced-gateway.log",
        worker=False,
        env=otel_env,
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def traced_worker(
    database: DatabaseURL,
    gateway_config: Path,
    otel_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    worker = start_worker(
        database_url=database.libpq(),
        config=gateway_config,
        log=tmp_path_factory.mktemp("logs") / "traced-worker.log",
        env=otel_env,
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def traced_client(
    traced_gateway: Gateway, traced_worker: Process, database: DatabaseURL
) -> openai.OpenAI:
    key = create_key(database.libpq(), "traced")
    return openai.OpenAI(base_url=traced_gateway.api, api_key=key, max_retries=0, timeout=60)


def recorded(mock_upstream: str, name: str) -> list[dict[str, Any]]:
    attempts: list[dict[str, Any]] = httpx.get(f"{mock_upstream}/_mock/attempts/{name}").json()[
        "attempts"
    ]
    return attempts


def whole_trace(receiver: Receiver, trace_id: str) -> list[Received]:
    """The spans of ``trace_id`` once the gateway's server span and the worker's attempt and
    upstream client spans have all arrived."""

    def complete() -> list[Received] | None:
        spans = receiver.of_trace(trace_id)
        kinds = {span.kind for span in spans}
        if {ProtoSpan.SPAN_KIND_SERVER, ProtoSpan.SPAN_KIND_CONSUMER} <= kinds and (
            ProtoSpan.SPAN_KIND_CLIENT in kinds
        ):
            return spans
        return None

    return wait_until(complete, f"the spans of trace {trace_id}", timeout=20)


def flex_call(client: openai.OpenAI, name: str, **extra: Any) -> Any:
    return client.responses.create(
        model="remote", input=f"mock:key={name} hello", service_tier="flex", **extra
    )


def test_one_flex_request_is_one_trace_across_gateway_worker_and_upstream(
    traced_client: openai.OpenAI, receiver: Receiver, mock_upstream: str
):
    name = f"traced-{secrets.token_hex(4)}"
    answer = flex_call(traced_client, name)
    assert answer.status == "completed"

    [sent] = recorded(mock_upstream, name)
    traceparent = sent["headers"]["traceparent"]
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled

    spans = whole_trace(receiver, trace_id)
    [server] = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_SERVER]
    [attempt] = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_CONSUMER]
    [client] = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_CLIENT]
    [queued] = [s for s in spans if s.name == "queue wait"]

    # Who is who: the gateway's server span, the worker's attempt and upstream call.
    assert server.resource["tiergate.role"] == "gateway"
    assert server.resource["service.name"] == "tiergate"
    assert attempt.resource["tiergate.role"] == client.resource["tiergate.role"] == "worker"
    assert server.resource["service.instance.id"] != attempt.resource["service.instance.id"]
    assert server.name == "POST /v1/responses"
    assert server.parent_id == ""  # no traceparent from the client: the trace starts here
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.request.model"] == "remote"
    assert server.attributes["tiergate.tier"] == "flex"

    # The row kept the server span's context; the worker continued it.
    assert attempt.parent_id == queued.parent_id == server.span_id
    assert attempt.attributes["tiergate.request_id"] == answer.id
    assert attempt.attributes["tiergate.executor"] == "direct"
    assert attempt.attributes["tiergate.deployment"]
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0

    # The upstream call is the attempt's child, and the upstream was sent its context.
    assert client.parent_id == attempt.span_id
    assert parent_id == client.span_id
    assert client.attributes["gen_ai.operation.name"] == "chat"
    assert client.attributes["tiergate.executor"] == "direct"
    assert client.attributes["tiergate.tier"] == "flex"
    assert client.attributes["gen_ai.usage.input_tokens"] > 0
    assert client.attributes["gen_ai.response.model"]

    # Never the key, nor the prompt.
    for span in spans:
        for value in span.attributes.values():
            assert "hello" not in str(value)
            assert not str(value).startswith("sk-")


def test_a_client_traceparent_is_continued(
    traced_client: openai.OpenAI, receiver: Receiver, mock_upstream: str
):
    name = f"continued-{secrets.token_hex(4)}"
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    flex_call(traced_client, name, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})

    [sent] = recorded(mock_upstream, name)
    assert sent["headers"]["traceparent"].split("-")[1] == trace_id
    spans = whole_trace(receiver, trace_id)
    [server] = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_SERVER]
    assert server.parent_id == parent_id
    assert {s.resource["tiergate.role"] for s in spans} == {"gateway", "worker"}


@pytest.fixture(scope="module")
def untraced_client(
    databases: DatabaseFactory, gateway_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    """``serve`` with its worker and no OTEL_* variables, on a database of its own (the traced
    worker would run its work otherwise)."""
    database = databases.create()
    gw = start_gateway(
        database_url=database.libpq(),
        config=gateway_config,
        log=tmp_path_factory.mktemp("logs") / "untraced-gateway.log",
    )
    key = create_key(database.libpq(), "untraced")
    yield openai.OpenAI(base_url=gw.api, api_key=key, max_retries=0, timeout=60)
    gw.process.stop()


def test_without_the_variables_no_traceparent_reaches_the_upstream(
    untraced_client: openai.OpenAI, mock_upstream: str
):
    name = f"untraced-{secrets.token_hex(4)}"
    flex_call(untraced_client, name)
    flex_call(untraced_client, name, extra_headers={"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"})
    [first, second] = recorded(mock_upstream, name)
    assert "traceparent" not in first["headers"]
    assert "traceparent" not in second["headers"]
