"""OTLP trace receivers for the tests: HTTP/protobuf and gRPC, both decoding the exported
spans with ``opentelemetry-proto``."""

from __future__ import annotations

import gzip
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

SERVER = ProtoSpan.SPAN_KIND_SERVER
CLIENT = ProtoSpan.SPAN_KIND_CLIENT
CONSUMER = ProtoSpan.SPAN_KIND_CONSUMER
INTERNAL = ProtoSpan.SPAN_KIND_INTERNAL


@dataclass(frozen=True)
class Received:
    """One span as a receiver got it, with its events and its resource's attributes."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    events: dict[str, dict[str, Any]]  # by name (the last of a name)
    resource: dict[str, Any]
    error: bool  # its status is ERROR


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        found[pair.key] = _value(pair.value)
    return found


def decoded(request: ExportTraceServiceRequest) -> list[Received]:
    """The spans of one export request."""
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Received(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        events={e.name: _attributes(e.attributes) for e in span.events},
                        resource=resource,
                        error=span.status.code == span.status.STATUS_CODE_ERROR,
                    )
                )
    return spans


class Spans:
    """What a receiver got so far (thread-safe)."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> None:
        got = decoded(request)
        with self.lock:
            self.spans.extend(got)

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.spans)

    def of_trace(self, trace_id: str) -> list[Received]:
        return [span for span in self.all() if span.trace_id == trace_id]


class HttpReceiver(Spans):
    """A tiny OTLP/HTTP receiver: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.add(ExportTraceServiceRequest.FromString(body))
                receiver.paths.append(self.path)
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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcReceiver(Spans):
    """A tiny OTLP/gRPC receiver: the collector's ``TraceService.Export``."""

    def __init__(self) -> None:
        super().__init__()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
            ) -> ExportTraceServiceResponse:
                receiver.add(request)
                return ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)
