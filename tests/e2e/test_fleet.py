"""A model served by a fleet: balancing, health, fallback, pinning, capacity, provider keys.

Real processes: the gateway (with its worker), a second worker process, and five mock
providers on loopback (plus a port nobody listens on); the official SDK as the client.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import (
    Gateway,
    Process,
    base_env,
    free_port,
    start_gateway,
    start_mock_upstream,
    start_worker,
)
from tests.e2e.conftest import PROVIDER_SECRET, row
from tests.e2e.test_security import dump_database, forms
from tests.support.admin import deployments_json

ORG = "org-fleet-test"
MESSAGES = [{"role": "user", "content": "hello fleet"}]


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Mock providers a-e by name; d is down (503) for the whole module."""
    logs = tmp_path_factory.mktemp("mocks")
    started = {name: start_mock_upstream(logs / f"{name}.log") for name in "abcde"}
    httpx.post(started["d"][0] + "/_mock/outage", json={"status": 503}).raise_for_status()
    yield {name: url for name, (url, _) in started.items()}
    for _, process in started.values():
        process.stop()


@pytest.fixture(scope="module")
def black_hole() -> Iterator[int]:
    """A port whose accept queue is full: connecting there hangs until the client's timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for each in (*fillers, server):
        each.close()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet-logs")


@pytest.fixture(scope="module")
def gateway_config(
    tmp_path_factory: pytest.TempPathFactory, mocks: dict[str, str], black_hole: int
) -> Path:
    v1 = {name: url + "/v1" for name, url in mocks.items()}
    closed = f"http://127.0.0.1:{free_port()}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "fleet",
                "deployments": [
                    {"name": "gpu-a", "upstream": v1["a"], "weight": 2},
                    {"name": "gpu-b", "upstream": v1["b"], "weight": 1},
                ],
            },
            {"name": "spare", "upstream": v1["c"], "upstream_model": "spare-upstream"},
            {"name": "lonely", "upstream": closed, "fallbacks": ["spare"]},
            {"name": "lonely-only", "upstream": closed},
            {"name": "flaky", "upstream": v1["d"], "fallbacks": ["spare"]},
            {
                "name": "retry",
                "deployments": [
                    {"name": "x", "upstream": v1["d"], "weight": 1000},
                    {"name": "y", "upstream": v1["e"], "weight": 1},
                ],
            },
            {
                "name": "narrow",
                "deployments": [{"name": "one", "upstream": v1["e"], "max_concurrency": 1}],
                "route_timeout_s": 0.5,
            },
            {
                "name": "keyed",
                "deployments": [
                    {
                        "name": "vendor",
                        "upstream": v1["e"],
                        "api_key_env": "TIERGATE_TEST_PROVIDER_KEY",
                        "headers": {"x-org": "${FLEET_ORG}"},
                    }
                ],
            },
            {"name": "chatonly", "upstream": v1["e"], "endpoints": ["chat"]},
            {
                "name": "holey",
                "deployments": [
                    {
                        "name": "hole",
                        "upstream": f"http://127.0.0.1:{black_hole}/v1",
                        "weight": 1000,
                    },
                    {"name": "ok", "upstream": v1["e"]},
                ],
                "timeout_s": 1,  # the connect timeout too
            },
        ],
        {
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
            "heartbeat_s": 0.5,
            "health": {"failures_to_trip": 2, "cooldown_s": 1.0, "max_cooldown_s": 2.0},
        },
    )


@pytest.fixture(scope="module")
def gateway(database: DatabaseURL, gateway_config: Path, logs: Path) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=gateway_config,
        log=logs / "gateway.log",
        env={"TIERGATE_TEST_PROVIDER_KEY": PROVIDER_SECRET, "FLEET_ORG": ORG},
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def worker(database: DatabaseURL, gateway_config: Path, logs: Path) -> Iterator[Process]:
    """A worker process of its own: it must learn what the gateway found out."""
    process = start_worker(
        database_url=database.libpq(), config=gateway_config, log=logs / "worker.log"
    )
    yield process
    process.stop()


def chat(client: openai.OpenAI, model: str, **extra: object) -> tuple[ChatCompletion, str]:
    """One chat call; the completion (validated) and the deployment that served it."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,
        **extra,  # type: ignore[arg-type]
    )
    completion = ChatCompletion.model_validate(raw.http_response.json())
    return completion, raw.headers["x-tiergate-deployment"]


def served_counts(mocks: dict[str, str], *names: str) -> dict[str, int]:
    return {
        name: httpx.get(mocks[name] + "/_mock/stats").json().get("/v1/chat/completions", 0)
        for name in names
    }


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Until ``condition()`` holds (each check is an observation of the system)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def metric(gateway: Gateway, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(name + "{"):
            found = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(found.split(","))) == wanted:
                return float(line.rsplit(" ", 1)[1])
    return None


def state_of(gateway: Gateway, model: str, deployment: str) -> str:
    """The state ``/metrics`` marks with 1 for this deployment."""
    (state,) = [
        state
        for state in ("healthy", "out", "probing")
        if metric(
            gateway, "tiergate_deployment_state", model=model, deployment=deployment, state=state
        )
        == 1.0
    ]
    return state


def test_weights_split_the_traffic(client: openai.OpenAI, mocks: dict[str, str]):
    before = served_counts(mocks, "a", "b")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: chat(client, "fleet"), range(3000)))
    served = Counter(deployment for _, deployment in results)
    assert set(served) == {"gpu-a", "gpu-b"}
    share_a = served["gpu-a"] / 3000
    assert abs(share_a - 2 / 3) <= 0.05, served
    after = served_counts(mocks, "a", "b")
    assert after["a"] - before["a"] == served["gpu-a"]  # the header tells the truth
    assert after["b"] - before["b"] == served["gpu-b"]
    assert {completion.model for completion, _ in results} == {"fleet"}


def test_a_failing_deployment_is_taken_out_then_tried_again(
    client: openai.OpenAI, gateway: Gateway, mocks: dict[str, str]
):
    httpx.post(mocks["b"] + "/_mock/outage", json={"status": 503}).raise_for_status()
    try:
        before = served_counts(mocks, "b")["b"]
        for _ in range(40):
            completion, deployment = chat(client, "fleet")
            assert deployment == "gpu-a"  # every call answered: a failure went on to gpu-a
            assert completion.choices[0].message.content == "echo: hello fleet"
        # Two faults take gpu-b out; while out it gets no call (at most a probe after 1 s).
        assert served_counts(mocks, "b")["b"] - before <= 3
        assert state_of(gateway, "fleet", "gpu-b") in ("out", "probing")
    finally:
        httpx.post(mocks["b"] + "/_mock/outage", json={"status": None}).raise_for_status()
    # Once it answers again, a probe brings it back into rotation.
    wait_for(lambda: chat(client, "fleet")[1] == "gpu-b")
    assert state_of(gateway, "fleet", "gpu-b") == "healthy"


def test_no_call_waits_for_a_deployment_that_is_out(client: openai.OpenAI):
    def timed() -> tuple[float, str]:
        started = time.monotonic()
        _, deployment = chat(client, "holey")
        return time.monotonic() - started, deployment

    # The first calls go to "hole" (weight 1000 to 1), wait out its 1 s connect timeout, and
    # are answered by "ok"; two such faults take "hole" out ...
    first = [timed() for _ in range(2)]
    assert [deployment for _, deployment in first] == ["ok", "ok"]
    assert all(seconds >= 0.9 for seconds, _ in first)
    # ... and while it is out no call pays that timeout again. Only a probe may, once a
    # cool-down (1 s, then 2 s) has ended: at most one per second spent here.
    tripped = time.monotonic()
    then = [timed() for _ in range(10)]
    assert {deployment for _, deployment in then} == {"ok"}
    slow = [seconds for seconds, _ in then if seconds >= 0.5]
    assert len(slow) <= int(time.monotonic() - tripped) and len(slow) < 10


def test_unreachable_model_falls_back_and_keeps_the_asked_name(
    client: openai.OpenAI, db: psycopg.Connection
):
    raw = client.chat.completions.with_raw_response.create(model="lonely", messages=MESSAGES)
    completion = ChatCompletion.model_validate(raw.http_response.json())
    assert raw.headers["x-tiergate-deployment"] == "spare/default"
    assert completion.model == "lonely"  # not the fallback's "spare-upstream"
    stored = row(db, raw.headers["x-request-id"])
    assert (stored["model"], stored["deployment"], stored["status"]) == (
        "lonely",
        "spare/default",
        "completed",
    )
    # A 5xx from every deployment of a model falls back too.
    _, deployment = chat(client, "flaky")
    assert deployment == "spare/default"


def test_no_deployment_left_is_a_502_naming_no_address(client: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="lonely-only", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-request-id"]
    text = caught.value.response.text
    assert "127.0.0.1" not in text and "ConnectionKey" not in text  # no provider address


def test_pinning_header(client: openai.OpenAI, mocks: dict[str, str], db: psycopg.Connection):
    pin = {"x-tiergate-deployment": "gpu-b"}
    before = served_counts(mocks, "b")["b"]
    for _ in range(20):
        _, deployment = chat(client, "fleet", extra_headers=pin)
        assert deployment == "gpu-b"
    assert served_counts(mocks, "b")["b"] - before == 20
    # Deferred calls keep their pin until a worker runs them.
    raw = client.responses.with_raw_response.create(
        model="fleet", input="pinned", service_tier="flex", extra_headers=pin
    )
    response = Response.model_validate(raw.http_response.json())
    assert response.status == "completed"
    stored = row(db, response.id)
    assert (stored["pinned_deployment"], stored["deployment"]) == ("gpu-b", "gpu-b")
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, "fleet", extra_headers={"x-tiergate-deployment": "gpu-z"})
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unknown_deployment"
    assert "gpu-a, gpu-b" in error["message"]


def test_flex_retry_goes_to_another_deployment(
    client: openai.OpenAI, mocks: dict[str, str], db: psycopg.Connection
):
    response = client.responses.create(
        model="retry", input="mock:key=moved hi", service_tier="flex"
    )
    Response.model_validate(response.model_dump())
    assert response.status == "completed"
    failed_at = httpx.get(mocks["d"] + "/_mock/attempts/moved").json()["attempts"]
    served_at = httpx.get(mocks["e"] + "/_mock/attempts/moved").json()["attempts"]
    assert [a["status"] for a in served_at] == [200]
    assert len(failed_at) <= 1  # weight 1000 to 1: x first, almost always
    stored = row(db, response.id)
    assert stored["deployment"] == "y" and stored["attempts"] == len(failed_at) + 1


def test_full_deployments_mean_503_for_realtime_and_a_queue_for_flex(
    client: openai.OpenAI, gateway: Gateway
):
    slow: list[ChatCompletion] = []
    busy = threading.Thread(
        target=lambda: slow.append(
            client.chat.completions.create(
                model="narrow", messages=[{"role": "user", "content": "mock:sleep_ms=3000 hi"}]
            )
        )
    )
    busy.start()
    try:
        wait_for(
            lambda: (
                metric(gateway, "tiergate_deployment_in_flight", model="narrow", deployment="one")
                == 1.0
            )
        )
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="narrow", messages=MESSAGES)
        waited = time.monotonic() - started
        assert caught.value.status_code == 503
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "no_capacity"
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert 0.4 <= waited < 2.5  # route_timeout_s is 0.5: bounded, no hang
        # Deferred work is queued instead, and runs once there is room.
        queued = client.responses.create(model="narrow", input="later", background=True)
        assert queued.status in ("queued", "in_progress")
    finally:
        busy.join(30)
    assert slow and slow[0].choices[0].message.content == "echo: mock:sleep_ms=3000 hi"
    wait_for(lambda: client.responses.retrieve(queued.id).status == "completed")


def test_provider_keys_and_headers_reach_only_the_provider(
    client: openai.OpenAI,
    key: str,
    mocks: dict[str, str],
    db: psycopg.Connection,
    logs: Path,
):
    client.responses.create(model="keyed", input="mock:key=creds hi")
    client.responses.create(model="keyed", input="mock:key=creds hi", service_tier="flex")
    seen = httpx.get(mocks["e"] + "/_mock/attempts/creds").json()["attempts"]
    assert len(seen) == 2
    for attempt in seen:
        assert attempt["headers"]["authorization"] == f"Bearer {PROVIDER_SECRET}"
        assert attempt["headers"]["x-org"] == ORG
        assert key not in json.dumps(attempt["headers"])  # the client's key stays here
    everything = "\n".join(dump_database(db).values())
    log_text = "\n".join(p.read_text() for p in logs.glob("*.log"))
    for secret in (key, PROVIDER_SECRET):
        for form in forms(secret):
            assert form not in everything and form not in log_text


def test_a_model_serves_only_its_endpoints(client: openai.OpenAI, mocks: dict[str, str]):
    before = httpx.get(mocks["e"] + "/_mock/stats").json().get("/v1/embeddings", 0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="chatonly", input="hi")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_supported"
    assert httpx.get(mocks["e"] + "/_mock/stats").json().get("/v1/embeddings", 0) == before
    _, deployment = chat(client, "chatonly")
    assert deployment == "default"


def test_processes_share_what_they_observe(
    client: openai.OpenAI, worker: Process, database: DatabaseURL, gateway_config: Path
):
    def views() -> list[dict]:
        shown = deployments_json(database.libpq(), gateway_config)
        flaky = next(d for d in shown["deployments"] if d["model"] == "flaky")
        assert flaky["executor"] == "direct" and flaky["jobs"] is None
        return list(shown["processes"])

    def state_in(shown: list[dict], kind: str) -> set[str]:
        return {
            entry["state"]
            for view in shown
            if view["kind"] == kind
            for entry in view["deployments"] or []
            if entry["model"] == "flaky"
        }

    # A cool-down lasts 1-2 s: on a loaded machine the two views need not show it at the same
    # moment, so each is watched until it has shown it once.
    seen_out = {"gateway": False, "worker": False}

    def both_seen_out() -> bool:
        chat(client, "flaky")  # keeps the gateway's probes failing
        shown = views()
        for kind in seen_out:
            seen_out[kind] |= state_in(shown, kind) == {"out"}
        return all(seen_out.values())

    # The separate worker never called flaky: it learns the cool-down from the gateway's view.
    wait_for(both_seen_out, timeout_s=60)
    table = subprocess.run(
        [sys.executable, "-m", "app.cli", "deployments"],
        env=base_env(DATABASE_URL=database.libpq(), TIERGATE_CONFIG=str(gateway_config)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "live process(es) reporting" in table.splitlines()[0]
    flaky = next(line for line in table.splitlines() if line.startswith("flaky "))
    # Its state moves on every second (cool-downs of 1-2 s); its last error stays.
    assert re.search(r"\b(out \d+s|probing|healthy)\b", flaky) and "HTTP 503" in flaky
    assert "EXECUTOR" in table.splitlines()[1] and " direct " in flaky
    assert "Open provider jobs" not in table  # no deployment uses a Batch API
