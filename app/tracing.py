"""OpenTelemetry traces, when the standard variables ask for them (docs/observability.md).

Tracing is on when ``OTEL_TRACES_EXPORTER`` names ``otlp`` (and ``OTEL_SDK_DISABLED`` is not
``true``); the rest is the SDK's own reading of the standard variables: the endpoint
(``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``), the protocol (``http/protobuf``, the default, or
``grpc``), the batch processor (``OTEL_BSP_*``), the sampler (``OTEL_TRACES_SAMPLER[_ARG]``)
and the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).

When it is off, nothing of OpenTelemetry is imported and :data:`tracer` stays None: the hot
paths test that one module attribute and do nothing else. The helpers below are called only
when it is set.

The trace of a request crosses processes as a W3C ``traceparent``: the client's (continued by
the gateway's server span), the one a deferred request's row keeps (continued by the attempt
of whichever worker claims it, after any restart), and the one sent to the upstream.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from app.settings import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

# Set by ``setup`` when tracing is on; None otherwise (the hot paths' one test).
tracer: Tracer | None = None
_provider: TracerProvider | None = None
# The ``tracing:`` section this process was set up with (what spans carry).
config = TracingConfig()

ROLE = "tiergate.role"


class Role:
    """What a process does (``tiergate.role`` of its resource)."""

    GATEWAY = "gateway"
    WORKER = "worker"
    BOTH = "both"  # ``serve`` with its in-process worker


class TracingProblem(Exception):
    """The OTEL_* variables ask for something tiergate cannot do."""


PROTOCOLS = ("http/protobuf", "grpc")

# GenAI semantic conventions: the operation of each inference endpoint.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces exported by OTLP."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {part.strip().lower() for part in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    return "otlp" in exporters


def setup(
    role: str, env: Mapping[str, str] = os.environ, *, settings: TracingConfig | None = None
) -> bool:
    """Start exporting this process's spans if the variables ask for it; whether it did.
    ``settings`` (the ``tracing:`` section) says what the spans carry."""
    global tracer, _provider, config
    if settings is not None:
        config = settings
    if tracer is not None:
        return True
    if not wanted(env):
        return False
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in PROTOCOLS:
        raise TracingProblem(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: tiergate exports traces by"
            f" {' or '.join(PROTOCOLS)}"
        )
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    resource = Resource.create({SERVICE_INSTANCE_ID: str(uuid.uuid4()), ROLE: role})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "tiergate"}))
    exporter: SpanExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        exporter = HttpExporter()
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    trace.set_tracer_provider(provider)
    _provider = provider
    tracer = provider.get_tracer("tiergate")
    return True


def shutdown() -> None:
    """Export what is left (at a process's end)."""
    global tracer, _provider, config
    if _provider is not None:
        _provider.shutdown()
    tracer = _provider = None
    config = TracingConfig()


def operation(endpoint: str) -> str:
    """The GenAI operation name of an inference endpoint."""
    return OPERATIONS.get(endpoint, endpoint)


def _parent(traceparent: str | None) -> Context | None:
    """The context of a W3C ``traceparent`` (None: a new trace)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, if one is recording."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def server_span(
    method: str, path: str, incoming: str | None, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """The gateway's span of one call, continuing the client's ``incoming`` traceparent."""
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    with tracer.start_as_current_span(
        f"{method} {path}",
        context=_parent(incoming),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path, **attributes},
    ) as span:
        yield span


@contextlib.contextmanager
def attempt_span(
    traceparent: str | None, created_at: dt.datetime | None, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """A worker's attempt at a deferred row, in the trace its row keeps; with a span for its
    wait in the queue (from ``created_at`` to now) before it."""
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    parent = _parent(traceparent)
    if created_at is not None:
        now = dt.datetime.now(dt.UTC)
        tracer.start_span(
            "queue wait",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(created_at),
        ).end(end_time=_ns(now))
    with tracer.start_as_current_span(
        "attempt", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def client_span(operation: str, model: str, attributes: Mapping[str, Any]) -> Iterator[Span | None]:
    """The span of an upstream call, inside the current trace (None outside any: a batch line
    is not a trace of its own)."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with tracer.start_as_current_span(
        f"{operation} {model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            **attributes,
        },
    ) as span:
        yield span


def provider(engine: str) -> str:
    """``gen_ai.provider.name`` of a deployment: its engine when declared (``vllm``,
    ``sglang``, ``llamacpp``), else ``openai``: every upstream tiergate calls directly speaks
    OpenAI's API, and the conventions name OpenAI-compatible servers so."""
    return "openai" if engine == "none" else engine


def start_client(operation: str, model: str, attributes: Mapping[str, Any]) -> Span | None:
    """An upstream call's span that outlives a ``with`` block (a relayed stream: it ends with
    the stream); make it current with :func:`using` while the request is sent. None outside
    any trace."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    return tracer.start_span(
        f"{operation} {model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            **attributes,
        },
    )


@contextlib.contextmanager
def using(span: Span | None) -> Iterator[None]:
    """``span`` as the current span inside the block (it does not end it)."""
    if span is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=False):
        yield


@contextlib.contextmanager
def step(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """A child span of the current one for a step of its work (None outside any trace)."""
    from opentelemetry import trace

    assert tracer is not None
    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def event(name: str, attributes: Mapping[str, Any]) -> None:
    """An event on the current span, with the attributes whose value is known."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():  # not in a trace the sampler left out
        span.add_event(name, {key: value for key, value in attributes.items() if value is not None})


@contextlib.contextmanager
def phase_span(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A job's span (a batch's validate, run or finalize) in the trace its row keeps."""
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    with tracer.start_as_current_span(
        name, context=_parent(traceparent), kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """No current span inside the block: what runs there starts no span of its own and
    sends no ``traceparent`` (an unsampled batch line)."""
    from opentelemetry import trace

    with trace.use_span(trace.INVALID_SPAN, end_on_exit=False):
        yield


def sampled(identifier: str, ratio: float) -> bool:
    """Whether ``identifier`` is in the sample of ``ratio``: the same answer every time, in
    every process (a retried batch line decides as its first attempt did)."""
    if ratio <= 0.0:
        return False
    if ratio >= 1.0:
        return True
    digest = hashlib.blake2b(identifier.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < ratio * 2**64


def trace_id() -> str | None:
    """The current trace's id in hex (None outside any trace)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def failed(span: Span | None, description: str) -> None:
    """Mark ``span`` as ended in error."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))


def capture(span: Span | None, endpoint: str, request: Any, answer: Any) -> None:
    """Prompt and answer text on ``span`` (``gen_ai.input.messages``,
    ``gen_ai.output.messages``), each cut to ``content_max_chars``; only when the
    ``tracing:`` section's ``capture_content`` asks for it."""
    if span is None or not config.capture_content or not span.is_recording():
        return
    cap = config.content_max_chars
    inputs = _input_messages(endpoint, request)
    if inputs:
        span.set_attribute("gen_ai.input.messages", _capped(inputs, cap))
    outputs = _output_messages(answer)
    if outputs:
        span.set_attribute("gen_ai.output.messages", _capped(outputs, cap))


def _capped(messages: list[dict[str, Any]], cap: int) -> str:
    text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= cap else text[: cap - 1] + "\u2026"


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append({"type": "text", "content": part["text"]})
    return parts


def _input_messages(endpoint: str, body: Any) -> list[dict[str, Any]]:
    """The request's messages in the GenAI conventions' shape (text parts only)."""
    if not isinstance(body, dict):
        return []
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "parts": _parts(body["instructions"])})
    raw = body.get("messages") if endpoint == "/v1/chat/completions" else body.get("input")
    if endpoint == "/v1/completions":
        raw = body.get("prompt")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], str)):
        texts = [raw] if isinstance(raw, str) else raw
        messages += [{"role": "user", "parts": _parts(t)} for t in texts if isinstance(t, str)]
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and "role" in item:
                messages.append({"role": str(item["role"]), "parts": _parts(item.get("content"))})
    return messages


def _output_messages(answer: Any) -> list[dict[str, Any]]:
    """The answer's messages (chat choices, Responses output items; text parts only)."""
    if not isinstance(answer, dict):
        return []
    messages: list[dict[str, Any]] = []
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            messages.append(
                {
                    "role": "assistant",
                    "parts": _parts(text),
                    "finish_reason": choice.get("finish_reason"),
                }
            )
    for item in answer.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            messages.append({"role": "assistant", "parts": _parts(item.get("content"))})
    return messages


def annotate(span: Span | None, attributes: Mapping[str, Any]) -> None:
    """Set the attributes whose value is known (not None) on ``span``."""
    if span is None or not span.is_recording():
        return
    span.set_attributes({name: value for name, value in attributes.items() if value is not None})


def current() -> Span:
    """The current span (a non-recording one outside any)."""
    from opentelemetry import trace

    return trace.get_current_span()


def _ns(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)
