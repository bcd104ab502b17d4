"""app/tracing.py: on only when the standard variables ask; nothing imported when off."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import logs, tracing
from app.config_file import ConfigError
from app.gateway.middleware import tracing as tracing_middleware
from app.settings import Settings, TracingConfig


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_only_the_standard_variables_turn_it_on(env: dict[str, str], on: bool):
    assert tracing.wanted(env) is on


def test_an_unknown_protocol_is_refused():
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(tracing.TracingProblem, match="http/json"):
        tracing.setup(tracing.Role.WORKER, env)
    assert tracing.tracer is None


def test_off_imports_nothing_of_opentelemetry():
    code = (
        "import sys, os; from app import tracing;"
        "import app.upstream.client, app.gateway.inference, worker.flex;"
        "assert not tracing.setup('gateway', {});"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_line_sampling_is_decided_by_the_id_alone():
    ids = [f"batch_req_{n:05d}" for n in range(20_000)]
    half = {i for i in ids if tracing.sampled(i, 0.5)}
    assert half == {i for i in ids if tracing.sampled(i, 0.5)}  # the same answer again
    assert 9_500 < len(half) < 10_500
    few = {i for i in ids if tracing.sampled(i, 0.01)}
    assert 100 < len(few) < 300 and few <= half  # a smaller ratio keeps a subset
    assert not any(tracing.sampled(i, 0.0) for i in ids[:100])
    assert all(tracing.sampled(i, 1.0) for i in ids[:100])
    # In another process too (a retried line may run on another worker).
    code = "from app import tracing; print(sorted(i for i in %r if tracing.sampled(i, 0.5)))"
    out = subprocess.run(
        [sys.executable, "-c", code % ids[:200]], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(sorted(i for i in ids[:200] if i in half))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """tracing on, spans kept in memory (the OTLP exporters are the e2e tests' part)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.tracer = provider.get_tracer("test")
    yield exporter
    tracing.tracer = None
    tracing.config = TracingConfig()


def test_content_is_captured_only_when_the_config_asks(spans: InMemorySpanExporter):
    body = {"messages": [{"role": "user", "content": "what is 2+2?"}]}
    answer = {
        "choices": [{"message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}]
    }
    with tracing.server_span("POST", "/v1/chat/completions", None, {}) as span:
        tracing.capture(span, "/v1/chat/completions", body, answer)
    tracing.config = TracingConfig(capture_content=True, content_max_chars=120)
    with tracing.server_span("POST", "/v1/chat/completions", None, {}) as span:
        tracing.capture(span, "/v1/chat/completions", body, answer)
        tracing.capture(span, "/v1/responses", {"input": "x" * 500}, None)
    off, on = spans.get_finished_spans()
    assert "gen_ai.input.messages" not in (off.attributes or {})
    attributes = on.attributes or {}
    assert attributes["gen_ai.output.messages"] == (
        '[{"role":"assistant","parts":[{"type":"text","content":"4"}],"finish_reason":"stop"}]'
    )
    cut = str(attributes["gen_ai.input.messages"])  # the second call's, cut to 120
    assert len(cut) == 120 and cut.endswith("\u2026") and cut.startswith('[{"role":"user"')


def test_log_lines_name_the_request_and_the_trace(spans: InMemorySpanExporter):
    stream = io.StringIO()
    handler = logs.handler("json")
    handler.setStream(stream)
    log = logging.getLogger("tiergate.test-logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("outside any request")
        token = logs.request_id.set("resp_abc")
        with tracing.server_span("POST", "/v1/responses", None, {}) as span:
            log.warning("inside %s", "it")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
        logs.request_id.reset(token)
    finally:
        log.removeHandler(handler)
    outside, inside, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert outside["request_id"] is None and outside["trace_id"] is None
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert inside["request_id"] == "resp_abc" and inside["trace_id"] == trace_id
    assert inside["message"] == "inside it" and inside["level"] == "WARNING"
    assert inside["logger"] == "tiergate.test-logs"
    assert "ValueError: boom" in failed["exception"] and failed["level"] == "ERROR"


def test_the_text_format_names_them_after_the_message():
    record = logging.LogRecord("tiergate", logging.INFO, __file__, 1, "hello", None, None)
    handler = logs.handler("text")
    token = logs.request_id.set("chatcmpl-1")
    try:
        handler.filter(record)
    finally:
        logs.request_id.reset(token)
    assert handler.format(record).endswith("tiergate: hello request_id=chatcmpl-1")


def test_json_logs_from_the_command_line(tmp_path: Path):
    """``--log-format json`` and ``TIERGATE_LOG_FORMAT=json``: a line is one JSON object;
    another value is refused in one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERGATE_", "DATABASE_URL"))}
    env["TIERGATE_HOME"] = str(tmp_path)
    for args, extra in ((["--log-format", "json"], {}), ([], {"TIERGATE_LOG_FORMAT": "json"})):
        mock = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args, "mock-upstream", "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env={**env, **extra},
        )
        try:
            assert mock.stderr is not None
            first = json.loads(mock.stderr.readline())
        finally:
            mock.kill()
            mock.wait()
        assert first["logger"] == "tiergate" and first["message"].startswith("mock upstream on")
        assert first["level"] == "INFO" and first["request_id"] is None
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "status"],
        capture_output=True,
        text=True,
        env={**env, "TIERGATE_LOG_FORMAT": "xml"},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "tiergate: TIERGATE_LOG_FORMAT='xml': one of text, json"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/responses", "/v1/responses"),
        ("/v1/responses/resp_1/input_items", "/v1/responses/{id}/input_items"),
        ("/v1/chat/completions/", "/v1/chat/completions"),
        ("/v1/chat/completions/chatcmpl-1/messages", "/v1/chat/completions/{id}/messages"),
        ("/v1/batches/batch_1/cancel", "/v1/batches/{id}/cancel"),
        ("/v1/organization/usage/completions", "/v1/organization/usage/completions"),
    ],
)
def test_server_spans_are_named_by_route_not_by_id(path: str, route: str):
    assert tracing_middleware.route(path) == route


def test_the_tracing_section(tmp_path: Path):
    path = tmp_path / "tiergate.yaml"
    path.write_text("tracing:\n  capture_content: true\n  batch_line_sample: 0.25\n")
    settings = Settings.from_env({"TIERGATE_CONFIG": str(path)})
    assert settings.tracing.capture_content and settings.tracing.batch_line_sample == 0.25
    assert Settings().tracing == TracingConfig(capture_content=False, batch_line_sample=0.01)
    path.write_text("models: []\ntracing:\n  capture_content: false\n  batch_line_sample: 2\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TIERGATE_CONFIG": str(path)})
    assert "tiergate.yaml line 4 (tracing.batch_line_sample)" in str(caught.value)
    assert "less than or equal to 1" in str(caught.value)
