"""One trace per request across processes (docs/observability.md): a gateway without its
worker and a separate worker export to an OTLP/HTTP receiver in the test; the mock upstream
records the ``traceparent`` it was sent. Both processes log in JSON, and their lines name the
request and the trace."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.batch import Batch
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from app import tracing
from app.store.dburl import DatabaseURL
from app.testing.postgres import DatabaseFactory
from app.testing.processes import Gateway, Process, create_key, start_gateway, start_worker
from tests.e2e.conftest import PROVIDER_SECRET
from tests.support.batches import chat_line, start_batch
from tests.support.otlp import CLIENT, CONSUMER, SERVER, HttpReceiver, Received
from tests.support.waiting import wait_until

LINE_SAMPLE = 0.5  # the traced stack's tracing.batch_line_sample


def traced_config(base: Path, path: Path, section: dict[str, Any]) -> Path:
    """``base`` (the e2e config) with a ``tracing:`` section."""
    data = yaml.safe_load(base.read_text())
    data["tracing"] = section
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "TIERGATE_TEST_PROVIDER_KEY": PROVIDER_SECRET,
        "TIERGATE_LOG_FORMAT": "json",
    }


@pytest.fixture(scope="module")
def config(gateway_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "traced.yaml"
    return traced_config(gateway_config, path, {"batch_line_sample": LINE_SAMPLE})


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def traced_gateway(
    database: DatabaseURL, config: Path, otel_env: dict[str, str], logs: Path
) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=config,
        log=logs / "traced-gateway.log",
        worker=False,
        env=otel_env,
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def traced_worker(
    database: DatabaseURL, config: Path, otel_env: dict[str, str], logs: Path
) -> Iterator[Process]:
    worker = start_worker(
        database_url=database.libpq(), config=config, log=logs / "traced-worker.log", env=otel_env
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def secret(database: DatabaseURL) -> str:
    return create_key(database.libpq(), "traced")


@pytest.fixture(scope="module")
def traced_client(traced_gateway: Gateway, traced_worker: Process, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=traced_gateway.api, api_key=secret, max_retries=0, timeout=60)


def recorded(mock_upstream: str, name: str) -> list[dict[str, Any]]:
    attempts: list[dict[str, Any]] = httpx.get(f"{mock_upstream}/_mock/attempts/{name}").json()[
        "attempts"
    ]
    return attempts


def trace_of(traceparent: str) -> tuple[str, str]:
    """The trace id and parent span id of a W3C ``traceparent`` (sampled)."""
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1
    return trace_id, parent_id


def spans_until(receiver: HttpReceiver, trace_id: str, complete: Any, what: str) -> list[Received]:
    """The spans of ``trace_id`` once ``complete(spans)`` says they have all arrived."""
    return wait_until(
        lambda: spans if complete(spans := receiver.of_trace(trace_id)) else None,
        what,
        timeout=30,
    )


def whole_trace(receiver: HttpReceiver, trace_id: str) -> list[Received]:
    """The spans of a flex request's trace: the gateway's server span, the worker's attempt
    and its upstream client span."""
    return spans_until(
        receiver,
        trace_id,
        lambda spans: {SERVER, CONSUMER, CLIENT} <= {s.kind for s in spans},
        f"the spans of trace {trace_id}",
    )


def flex_call(client: openai.OpenAI, name: str, **extra: Any) -> Any:
    return client.responses.create(
        model="remote", input=f"mock:key={name} hello", service_tier="flex", **extra
    )


def log_lines(path: Path) -> list[dict[str, Any]]:
    """A JSON log file's lines, each parsed (a line that is not one JSON object fails)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_flex_request_is_one_trace_across_gateway_worker_and_upstream(
    traced_client: openai.OpenAI, receiver: HttpReceiver, mock_upstream: str
):
    name = f"traced-{secrets.token_hex(4)}"
    answer = Response.model_validate(flex_call(traced_client, name).model_dump())
    assert answer.status == "completed"

    [sent] = recorded(mock_upstream, name)
    trace_id, parent_id = trace_of(sent["headers"]["traceparent"])

    spans = whole_trace(receiver, trace_id)
    [server] = [s for s in spans if s.kind == SERVER]
    [attempt] = [s for s in spans if s.kind == CONSUMER]
    [client] = [s for s in spans if s.kind == CLIENT]
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
    assert server.attributes["tiergate.request_id"] == answer.id

    # The gateway's steps, as events of its span: the key, the tier decision, the limits.
    assert server.events["auth"] == {"tiergate.key.name": "traced", "tiergate.auth": True}
    assert server.events["classify"]["tiergate.tier"] == "flex"
    assert server.events["classify"]["gen_ai.request.model"] == "remote"
    assert server.events["limits"]["tiergate.limits.rated"] is False

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
    assert client.attributes["gen_ai.provider.name"] == "openai"
    assert client.attributes["tiergate.tier"] == "flex"
    assert client.attributes["gen_ai.usage.input_tokens"] > 0
    assert client.attributes["gen_ai.response.model"]

    # No prompt text unless the config asks for it.
    for span in spans:
        for value in span.attributes.values():
            assert "hello" not in str(value)


def test_a_client_traceparent_is_continued(
    traced_client: openai.OpenAI, receiver: HttpReceiver, mock_upstream: str
):
    name = f"continued-{secrets.token_hex(4)}"
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    flex_call(traced_client, name, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})

    [sent] = recorded(mock_upstream, name)
    assert sent["headers"]["traceparent"].split("-")[1] == trace_id
    spans = whole_trace(receiver, trace_id)
    [server] = [s for s in spans if s.kind == SERVER]
    assert server.parent_id == parent_id
    assert {s.resource["tiergate.role"] for s in spans} == {"gateway", "worker"}


@pytest.mark.parametrize("stream", [False, True])
def test_a_realtime_call_is_one_trace_with_its_upstream_call(
    traced_client: openai.OpenAI, receiver: HttpReceiver, mock_upstream: str, stream: bool
):
    name = f"realtime-{secrets.token_hex(4)}"
    messages = [{"role": "user", "content": f"mock:key={name} hi"}]
    if stream:
        chunks = list(
            traced_client.chat.completions.create(model="remote", messages=messages, stream=True)
        )
        rid = chunks[0].id
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        answer = traced_client.chat.completions.with_raw_response.create(
            model="remote", messages=messages
        )
        rid = answer.headers["x-request-id"]
        assert ChatCompletion.model_validate(answer.parse().model_dump()).choices

    [sent] = recorded(mock_upstream, name)
    trace_id, parent_id = trace_of(sent["headers"]["traceparent"])
    spans = spans_until(
        receiver,
        trace_id,
        lambda spans: {SERVER, CLIENT} <= {s.kind for s in spans},
        "the realtime call's server and client spans",
    )
    [server] = [s for s in spans if s.kind == SERVER]
    [client] = [s for s in spans if s.kind == CLIENT]
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["tiergate.tier"] == "default"
    assert server.attributes["tiergate.request_id"] == rid
    assert server.events["classify"]["tiergate.stream"] is stream
    # The upstream call is a client span of the server span, and the upstream saw its id.
    assert client.parent_id == server.span_id and client.span_id == parent_id
    assert client.name == "chat remote-upstream"
    assert client.attributes["tiergate.executor"] == "realtime"
    assert client.attributes["gen_ai.provider.name"] == "openai"
    assert client.attributes["tiergate.stream"] is stream
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["gen_ai.usage.output_tokens"] > 0
    assert client.attributes["gen_ai.response.model"]
    assert client.attributes["tiergate.status"] == "completed"
    assert all(s.resource["tiergate.role"] == "gateway" for s in spans)


def test_batch_phases_join_the_create_requests_trace_and_lines_are_sampled(
    traced_client: openai.OpenAI, receiver: HttpReceiver, mock_upstream: str
):
    name = f"batch-{secrets.token_hex(4)}"
    lines = [chat_line(f"q{i}", f"mock:key={name} line {i}") for i in range(24)]
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    created = start_batch(
        traced_client.with_options(default_headers={"traceparent": traceparent}), lines
    )

    def ended() -> Batch | None:
        found = traced_client.batches.retrieve(created.id)
        return found if found.status in ("completed", "failed", "expired") else None

    batch = Batch.model_validate(wait_until(ended, "the batch to end", timeout=60).model_dump())
    assert batch.status == "completed"
    assert batch.output_file_id is not None
    results = [
        json.loads(line)
        for line in traced_client.files.content(batch.output_file_id).text.splitlines()
    ]
    line_ids = {result["id"] for result in results}
    assert len(line_ids) == len(lines)
    chosen = {i for i in line_ids if tracing.sampled(i, LINE_SAMPLE)}
    assert 0 < len(chosen) < len(lines)  # 24 lines at 0.5: some are in, some out

    def complete(spans: list[Received]) -> bool:
        names = [s.name for s in spans]
        return "batch finalize" in names and names.count("batch line") >= len(chosen)

    spans = spans_until(receiver, trace_id, complete, "the batch's phases and sampled lines")
    [server] = [s for s in spans if s.name == "POST /v1/batches"]
    [validate] = [s for s in spans if s.name == "batch validate"]
    runs = [s for s in spans if s.name == "batch run"]
    [finalize] = [s for s in spans if s.name == "batch finalize"]
    assert runs
    for phase in (validate, *runs, finalize):
        assert phase.parent_id == server.span_id
        assert phase.attributes["tiergate.batch_id"] == batch.id
        assert phase.resource["tiergate.role"] == "worker"
        assert not phase.error

    # Lines are spanned as the sample says, decided by their id: the same set in any process.
    line_spans = [s for s in spans if s.name == "batch line"]
    assert {s.attributes["tiergate.request_id"] for s in line_spans} == chosen
    run_ids = {run.span_id for run in runs}
    assert all(s.parent_id in run_ids for s in line_spans)
    assert all(s.attributes["tiergate.status"] == "completed" for s in line_spans)
    clients = [s for s in spans if s.kind == CLIENT]
    assert {c.parent_id for c in clients} == {s.span_id for s in line_spans}
    # ... and only sampled lines sent a traceparent upstream.
    sent = recorded(mock_upstream, name)
    assert len(sent) == len(lines)
    assert sum("traceparent" in attempt["headers"] for attempt in sent) == len(chosen)


def test_log_lines_are_json_and_name_the_request_and_trace(
    traced_client: openai.OpenAI,
    traced_gateway: Gateway,
    receiver: HttpReceiver,
    mock_upstream: str,
    logs: Path,
):
    # The worker logs a failed attempt's retry while it runs the request.
    name = f"logged-{secrets.token_hex(4)}"
    answer = traced_client.responses.create(
        model="remote", input=f"mock:key={name},fail_times=1 hi", service_tier="flex"
    )
    first, second = recorded(mock_upstream, name)
    trace_id, _ = trace_of(second["headers"]["traceparent"])
    assert trace_of(first["headers"]["traceparent"])[0] == trace_id

    def retry_line() -> dict[str, Any] | None:
        for line in log_lines(logs / "traced-worker.log"):
            if line["request_id"] == answer.id and "retry in" in line["message"]:
                return line
        return None

    line = wait_until(retry_line, "the worker's log line of the retry")
    assert line["trace_id"] == trace_id
    assert line["level"] == "INFO" and line["logger"].startswith("tiergate")
    assert line["time"].endswith("+00:00")

    # The gateway logs a realtime stream the upstream broke off.
    name = f"broken-{secrets.token_hex(4)}"
    with httpx.stream(
        "POST",
        f"{traced_gateway.api}/chat/completions",
        headers={"Authorization": f"Bearer {traced_client.api_key}"},
        json={
            "model": "remote",
            "stream": True,
            "messages": [{"role": "user", "content": f"mock:key={name},drop=1 hi"}],
        },
        timeout=30,
    ) as broken:
        rid = broken.headers["x-request-id"]
        body = b"".join(broken.iter_bytes())
    assert b"upstream_stream_broken" in body or b"broke" in body
    [sent] = recorded(mock_upstream, name)
    trace_id, _ = trace_of(sent["headers"]["traceparent"])

    def broke_line() -> dict[str, Any] | None:
        for line in log_lines(logs / "traced-gateway.log"):
            if line["request_id"] == rid and "broke" in line["message"]:
                return line
        return None

    line = wait_until(broke_line, "the gateway's log line of the broken stream")
    assert line["trace_id"] == trace_id
    # Every line of both processes is one JSON object with the same fields.
    for path in ("traced-gateway.log", "traced-worker.log"):
        for parsed in log_lines(logs / path):
            assert {"time", "level", "logger", "message", "request_id", "trace_id"} <= set(parsed)


def test_no_span_carries_a_key(
    traced_client: openai.OpenAI, receiver: HttpReceiver, secret: str, mock_upstream: str
):
    """After the tests above: no attribute or event of any span exported by the gateway or the
    worker holds the client's key or the provider's key (which the upstream did receive)."""
    name = f"keys-{secrets.token_hex(4)}"
    flex_call(traced_client, name)
    [sent] = recorded(mock_upstream, name)
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_SECRET}"
    whole_trace(receiver, trace_of(sent["headers"]["traceparent"])[0])
    spans = receiver.all()
    assert len(spans) > 20
    for span in spans:
        values = [*span.attributes.values(), *span.resource.values()]
        values += [v for event in span.events.values() for v in event.values()]
        for value in values:
            assert secret not in str(value) and PROVIDER_SECRET not in str(value), span.name


@pytest.fixture(scope="module")
def capturing_client(
    database: DatabaseURL,
    gateway_config: Path,
    otel_env: dict[str, str],
    secret: str,
    logs: Path,
) -> Iterator[openai.OpenAI]:
    """A second gateway (realtime calls only) whose config asks for prompt and answer text."""
    config = traced_config(
        gateway_config,
        logs / "capturing.yaml",
        {"capture_content": True, "content_max_chars": 200},
    )
    gw = start_gateway(
        database_url=database.libpq(),
        config=config,
        log=logs / "capturing-gateway.log",
        worker=False,
        env=otel_env,
    )
    yield openai.OpenAI(base_url=gw.api, api_key=secret, max_retries=0, timeout=60)
    gw.process.stop()


def test_capture_content_puts_prompt_and_answer_on_the_client_span(
    capturing_client: openai.OpenAI, receiver: HttpReceiver, mock_upstream: str
):
    name = f"captured-{secrets.token_hex(4)}"
    long_text = "word " * 100
    capturing_client.chat.completions.create(
        model="remote",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"mock:key={name} {long_text}"},
        ],
    )
    capturing_client.responses.create(model="remote", input=f"mock:key={name} short question")
    sent = recorded(mock_upstream, name)
    assert len(sent) == 2
    clients = []
    for attempt in sent:
        trace_id, _ = trace_of(attempt["headers"]["traceparent"])
        spans = spans_until(
            receiver, trace_id, lambda s: CLIENT in {x.kind for x in s}, "the client span"
        )
        [client] = [s for s in spans if s.kind == CLIENT]
        clients.append(client)
    chat, responses = clients
    chat_input = chat.attributes["gen_ai.input.messages"]
    assert len(chat_input) == 200 and chat_input.endswith("\u2026")  # cut to the cap
    assert chat_input.startswith('[{"role":"system","parts":[{"type":"text","content":"be brief"}')
    assert "word word" in chat_input
    chat_output = chat.attributes["gen_ai.output.messages"]  # the mock echoes: cut too
    assert chat_output.startswith('[{"role":"assistant","parts":[{"type":"text","content":"echo:')
    assert len(chat_output) == 200
    inputs = json.loads(responses.attributes["gen_ai.input.messages"])
    assert inputs == [
        {"role": "user", "parts": [{"type": "text", "content": f"mock:key={name} short question"}]}
    ]
    outputs = json.loads(responses.attributes["gen_ai.output.messages"])
    assert "short question" in outputs[0]["parts"][0]["content"]  # the mock echoes


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
    untraced_client.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": f"mock:key={name} hi"}]
    )
    first, second, third = recorded(mock_upstream, name)
    assert "traceparent" not in first["headers"]
    assert "traceparent" not in second["headers"]
    assert "traceparent" not in third["headers"]
