"""app/tracing.py: on only when the standard variables ask; nothing imported when off."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app import tracing


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
