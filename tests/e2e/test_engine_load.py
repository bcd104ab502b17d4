"""Deferred work follows the engine's own load and rides its priority scheduler, end to end.

Real processes: the gateway (with its in-process worker, which reads the engines' metrics)
and mock providers in engine mode (``mock-upstream --engine vllm``) publishing vLLM's
``/metrics`` for their own queue, one with vLLM's priority scheduler and one without; the
official SDK as the client; ``tiergate deployments`` as an admin runs it.
"""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, create_key, start_mock_upstream
from tests.e2e.conftest import row
from tests.support.admin import dashboard_session, deployments_json
from tests.support.waiting import wait_until

PRIORITY = {"realtime": 0, "flex": 10, "background": 15, "batch": 20}
READS = {"read_every_s": 0.1, "timeout_s": 1}
MESSAGES = [{"role": "user", "content": "hello engine"}]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``prio``: vLLM with priority scheduling; ``fcfs``: vLLM without (it refuses a
    priority); ``sick``: one whose metrics the tests break; ``sglang``: SGLang without
    priority scheduling (a test makes it refuse priorities)."""
    logs = tmp_path_factory.mktemp("engines")
    started = {
        "prio": start_mock_upstream(
            logs / "prio.log",
            latency_ms=50,
            capacity=4,
            engine="vllm",
            scheduling_policy="priority",
        ),
        "fcfs": start_mock_upstream(logs / "fcfs.log", latency_ms=20, capacity=4, engine="vllm"),
        "sick": start_mock_upstream(logs / "sick.log", latency_ms=20, capacity=4, engine="vllm"),
        "sglang": start_mock_upstream(
            logs / "sglang.log", latency_ms=20, capacity=4, engine="sglang"
        ),
    }
    yield {name: url for name, (url, _) in started.items()}
    for _, process in started.values():
        process.stop()


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, engines: dict[str, str]) -> Path:
    def model(name: str, engine: str, **deployment: Any) -> dict[str, Any]:
        return {
            "name": name,
            "deployments": [
                {
                    "name": "gpu",
                    "upstream": engines[engine] + "/v1",
                    "engine": "vllm",
                    "engine_load": READS,
                    **deployment,
                }
            ],
            "max_attempts": 3,
        }

    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            model("llama", "prio", priority=PRIORITY),
            model("refusing", "fcfs", priority=PRIORITY),
            model("sick", "sick", capacity=2),
            {
                "name": "sglang",
                "deployments": [
                    {
                        "name": "gpu",
                        "upstream": engines["sglang"] + "/v1",
                        "engine": "sglang",
                        "engine_load": READS,
                        "priority": PRIORITY,
                    }
                ],
            },
        ],
        {"heartbeat_s": 0.5, "retry_base_s": 0.05, "retry_max_s": 0.2, "flex_poll_s": 0.2},
    )


def engine(url: str, **controls: Any) -> dict[str, Any]:
    """Set the mock engine's controls; its state."""
    if controls:
        httpx.post(url + "/_mock/engine", json=controls).raise_for_status()
    state: dict[str, Any] = httpx.get(url + "/_mock/engine").json()
    return state


def attempts(url: str, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{url}/_mock/attempts/{key}").json()["attempts"]
    return found


def gateway_metric(gateway: Gateway, name: str, model: str) -> float | None:
    """One of the gateway's ``tiergate_engine_*`` samples for ``model``'s deployment."""
    text = httpx.get(gateway.url + "/metrics").text
    pattern = rf'^{name}{{deployment="gpu",model="{model}"}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def reads_after(gateway: Gateway, model: str, more: int) -> None:
    """Wait until the gateway has read the engine ``more`` more times (the events that
    show a decision was taken with the state the test set)."""
    start = gateway_metric(gateway, "tiergate_engine_metrics_reads_total", model) or 0
    wait_until(
        lambda: (
            (gateway_metric(gateway, "tiergate_engine_metrics_reads_total", model) or 0)
            >= start + more
        ),
        what=f"{more} more readings of {model}'s engine",
        timeout=30,
    )


def shown_engine(database: DatabaseURL, config: Path, model: str) -> dict[str, Any]:
    facts = deployments_json(database.libpq(), config)["deployments"]
    found: dict[str, Any] = next(d for d in facts if d["model"] == model)["engine"]
    return found


def tag() -> str:
    return f"eng-{uuid.uuid4().hex[:8]}"


def test_no_deferred_call_starts_while_the_engine_has_requests_waiting(
    client: openai.OpenAI,
    gateway: Gateway,
    engines: dict[str, str],
    db: psycopg.Connection,
):
    prio = engines["prio"]
    engine(prio, extra_waiting=5)  # load that never went through tiergate
    wait_until(
        lambda: gateway_metric(gateway, "tiergate_engine_requests_waiting", "llama") == 5,
        what="the gateway to read 5 requests waiting",
        timeout=30,
    )
    key = tag()
    deferred = [
        client.responses.create(
            model="llama",
            input=f"mock:key={key} deferred {i}",
            service_tier="flex",
            background=True,
        ).id
        for i in range(3)
    ]
    # Realtime calls pass at once, with the realtime priority.
    for i in range(3):
        answer = client.chat.completions.create(
            model="llama",
            messages=[{"role": "user", "content": f"mock:key={key} realtime {i}"}],
        )
        ChatCompletion.model_validate(answer.model_dump())
    reads_after(gateway, "llama", 10)
    sent = attempts(prio, key)
    assert [a["body"]["priority"] for a in sent] == [0, 0, 0]
    assert all(a["path"] == "/v1/chat/completions" for a in sent)
    assert all(row(db, rid)["status"] in ("queued", "in_progress") for rid in deferred)

    engine(prio, extra_waiting=0)  # the engine drains
    finals = [
        wait_until(
            lambda rid=rid: (r := client.responses.retrieve(rid)).status == "completed" and r,
            what="the deferred response to complete",
            timeout=60,
        )
        for rid in deferred
    ]
    for final in finals:
        Response.model_validate(final.model_dump())
    background = [a for a in attempts(prio, key) if a["path"] == "/v1/responses"]
    assert len(background) == 3
    assert {a["body"]["priority"] for a in background} == {PRIORITY["background"]}
    assert all(a["status"] == 200 for a in background)


def test_flex_calls_and_batch_lines_carry_their_tiers_priority(
    client: openai.OpenAI, engines: dict[str, str]
):
    key = tag()
    flex = client.responses.create(
        model="llama", input=f"mock:key={key} blocking flex", service_tier="flex"
    )
    assert Response.model_validate(flex.model_dump()).status == "completed"
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "llama",
                    "messages": [{"role": "user", "content": f"mock:key={key} line {i}"}],
                },
            }
        )
        + "\n"
        for i in range(2)
    )
    file = client.files.create(file=("lines.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
        what="the batch to complete",
        timeout=90,
    )
    assert Batch.model_validate(done.model_dump()).request_counts.completed == 2
    by_path = {(a["path"], a["body"]["priority"]) for a in attempts(engines["prio"], key)}
    assert by_path == {
        ("/v1/responses", PRIORITY["flex"]),
        ("/v1/chat/completions", PRIORITY["batch"]),
    }


def test_a_realtime_call_overtakes_batch_lines_inside_the_engine(
    client: openai.OpenAI, engines: dict[str, str]
):
    """Deferred calls fill the engine's slots; a realtime call (priority 0) preempts one of
    them (priority 20) and is answered before the lines that started first."""
    prio = engines["prio"]
    before = engine(prio)["preemptions"]
    key = tag()
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"slow-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "llama",
                    "messages": [
                        {"role": "user", "content": f"mock:key={key},sleep_ms=1500 slow {i}"}
                    ],
                },
            }
        )
        + "\n"
        for i in range(4)
    )
    file = client.files.create(file=("slow.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_until(
        lambda: engine(prio)["running"] >= 4,
        what="the batch lines to fill the engine's 4 slots",
        timeout=60,
    )
    answered: list[str] = []
    call = threading.Thread(
        target=lambda: answered.append(
            client.chat.completions.create(model="llama", messages=MESSAGES).id
        )
    )
    call.start()
    call.join(timeout=30)
    assert answered, "the realtime call was not answered"
    state = engine(prio)
    assert state["preemptions"] > before
    # The realtime call ended while the lines that held every slot before it still ran.
    assert client.batches.retrieve(batch.id).request_counts.completed == 0  # type: ignore[union-attr]
    wait_until(
        lambda: client.batches.retrieve(batch.id).status == "completed",
        what="the slow batch to complete",
        timeout=90,
    )


def test_an_engine_that_refuses_priorities_is_a_deployment_error_not_failed_rows(
    client: openai.OpenAI,
    engines: dict[str, str],
    database: DatabaseURL,
    gateway_config: Path,
    gateway: Gateway,
    db: psycopg.Connection,
):
    fcfs = engines["fcfs"]
    key = tag()
    first = client.responses.create(
        model="refusing", input=f"mock:key={key} first", service_tier="flex"
    )
    assert Response.model_validate(first.model_dump()).status == "completed"
    second = client.responses.create(
        model="refusing", input=f"mock:key={key} second", service_tier="flex"
    )
    assert second.status == "completed"
    sent = attempts(fcfs, key)
    # The first call was refused with its priority and sent again without; the second went
    # without one at once.
    assert [(a["status"], a["body"].get("priority")) for a in sent] == [
        (400, PRIORITY["flex"]),
        (200, None),
        (200, None),
    ]
    assert row(db, first.id)["attempts"] == 1
    shown = wait_until(
        lambda: (e := shown_engine(database, gateway_config, "refusing"))["priority_refused"] and e,
        what="tiergate deployments to show the refusal",
        timeout=30,
    )
    assert shown["text"].endswith("; priority refused")
    assert gateway_metric(gateway, "tiergate_engine_priority_refused", "refusing") == 1
    assert "refused the priority field" in gateway.process.log.read_text()
    # The dashboard's deployments table says the same.
    admin = create_key(database.libpq(), "engine-admin", admin=True)
    with dashboard_session(gateway.url, admin) as http:
        flights = http.get("/dashboard/api/overview").json()["in_flight"]
    cells = {(f["model"], f["engine"]) for f in flights}
    (refusing,) = [engine for model, engine in cells if model == "refusing"]
    assert refusing.startswith("vllm: ") and refusing.endswith("; priority refused")
    assert ("mock", "-") in cells


def test_metrics_that_fail_or_lie_fall_back_to_the_declared_capacity(
    client: openai.OpenAI,
    engines: dict[str, str],
    database: DatabaseURL,
    gateway_config: Path,
    gateway: Gateway,
):
    sick = engines["sick"]
    for broken, why in (
        ("garbage", "unparseable metrics line"),
        ("missing", "no vllm:num_requests_running series"),
        ("error", "answered 500"),
    ):
        engine(sick, metrics=broken)
        wait_until(
            lambda: gateway_metric(gateway, "tiergate_engine_metrics_ok", "sick") == 0,
            what=f"the gateway to give up on {broken} metrics",
            timeout=30,
        )
        shown = shown_engine(database, gateway_config, "sick")
        wait_until(
            lambda why=why: why in shown_engine(database, gateway_config, "sick")["text"],
            what="tiergate deployments to say why",
            timeout=30,
        )
        # Deferred calls still run, under the declared capacity.
        answer = client.responses.create(model="sick", input="still served", service_tier="flex")
        assert Response.model_validate(answer.model_dump()).status == "completed"
        engine(sick, metrics="ok")
        wait_until(
            lambda: gateway_metric(gateway, "tiergate_engine_metrics_ok", "sick") == 1,
            what="the gateway to read the metrics again",
            timeout=30,
        )
    assert "declared capacity" in shown["text"]
    log = gateway.process.log.read_text()
    assert "its engine's metrics are unusable" in log and "readable again" in log


def test_a_stream_refused_for_its_priority_is_sent_again_without_it(
    client: openai.OpenAI, engines: dict[str, str]
):
    """SGLang with ``--abort-on-priority-when-disabled`` refuses any priority, 0 included,
    with a 503: a realtime stream is opened again without the field and relayed whole."""
    sglang = engines["sglang"]
    engine(sglang, refuse_priority=True)
    key = tag()
    stream = client.chat.completions.create(
        model="sglang",
        messages=[{"role": "user", "content": f"mock:key={key} streamed"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == f"echo: mock:key={key} streamed"
    sent = attempts(sglang, key)
    assert [(a["status"], a["body"].get("priority")) for a in sent] == [(503, 0), (200, None)]
