"""Many huge bodies at once: the gateway's memory is set by its budget, not by the clients.

The gateway runs without its in-process worker and a worker runs as its own process, so each
one's resident memory is measured alone. Every body is a 7 MB JSON array of numbers, the
costliest shape to parse found in ``test_fuzz.py`` (about 30 MB of Python objects each).
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, start_gateway, start_worker
from tests.support.memory import MB, PeakRSS
from tests.support.waiting import wait_until

BUDGET = 16 * MB  # limits.inflight_body_bytes here: two 7 MB bodies at a time
CLIENTS = 16  # 112 MB of bodies in flight at once, seven times the budget
# Measured: 16 concurrent 7 MB bodies grew a gateway without a budget by 666-726 MB; with it the
# growth is a few copies of the two bodies the budget admits at a time.
GATEWAY_GROWTH_LIMIT = 250 * MB
# The worker (concurrency 4) holds the bodies of the jobs it runs, four at most.
WORKER_RSS_LIMIT = 500 * MB


def numbers_body(size: int, **fields: object) -> bytes:
    head = json.dumps({"model": "remote", **fields})[:-1].encode() + b', "input": ['
    count = (size - len(head)) // 10
    return head + b",".join(b"%9d" % i for i in range(count)) + b"]}"


def config_with(base: Path, directory: Path, **limits: object) -> Path:
    """The shared test config with the default body limit (8 MiB) and these limits."""
    data = yaml.safe_load(base.read_text())
    data["limits"].pop("max_body_bytes", None)
    data["limits"].update(limits)
    return write_config(directory / "tiergate.yaml", data["models"], data["limits"])


@pytest.fixture(scope="module")
def gateway_config(gateway_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return config_with(
        gateway_config, tmp_path_factory.mktemp("memory-config"), inflight_body_bytes=BUDGET
    )


@pytest.fixture(scope="module")
def with_worker() -> bool:
    """Each process's memory is measured alone: the worker runs as its own process."""
    return False


def metric(gateway: Gateway, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not exported"
    return float(match.group(1))


def large_bodies_held(gateway: Gateway) -> float:
    return metric(gateway, "tiergate_large_body_bytes")


def test_concurrent_huge_bodies_stay_within_the_budget(
    gateway: Gateway,
    database: DatabaseURL,
    gateway_config: Path,
    key: str,
    client: openai.OpenAI,
    tmp_path_factory: pytest.TempPathFactory,
):
    """16 clients send 7 MB bodies at once: 4 realtime, 8 blocking flex, 4 background. No
    worker runs until every body is in, so the 8 flex clients are all waiting meanwhile: they
    must not keep their bodies. Then a worker runs the 12 deferred calls."""
    assert gateway.process.proc is not None
    plan = ["realtime"] * 4 + ["flex"] * 8 + ["background"] * 4
    fields = {"realtime": {}, "flex": {"service_tier": "flex"}, "background": {"background": True}}
    bodies = [numbers_body(7 * MB, **fields[kind]) for kind in plan]
    http = httpx.Client(
        base_url=gateway.api, headers={"Authorization": f"Bearer {key}"}, timeout=300
    )
    with (
        PeakRSS(gateway.process.proc.pid) as gateway_rss,
        concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool,
    ):
        futures = [
            pool.submit(
                http.post,
                "/responses",
                content=body,
                headers={"content-type": "application/json"},
            )
            for body in bodies
        ]
        wait_until(
            lambda: (
                metric(gateway, "tiergate_waiting_clients") == 8 and large_bodies_held(gateway) == 0
            ),
            "every body accepted, the 8 blocking flex clients waiting",
            timeout=120,
        )
        assert metric(gateway, "tiergate_large_bodies_waiting") == 0
        worker = start_worker(
            database_url=database.libpq(),
            config=gateway_config,
            log=tmp_path_factory.mktemp("logs") / "worker.log",
            concurrency=4,
        )
        assert worker.proc is not None
        try:
            with PeakRSS(worker.proc.pid) as worker_rss:
                answers = [future.result() for future in futures]
                for kind, answer in zip(plan, answers, strict=True):
                    assert answer.status_code == 200, (kind, answer.text[:300])
                    if kind == "background":
                        rid = answer.json()["id"]
                        wait_until(
                            lambda rid=rid: client.responses.retrieve(rid).status == "completed",
                            f"background response {rid} to complete",
                            timeout=120,
                        )
                    else:
                        assert answer.json()["status"] == "completed", kind
        finally:
            worker.stop()
    assert large_bodies_held(gateway) == 0, "a call kept its share of the body budget"
    print(
        f"gateway RSS +{gateway_rss.growth // MB} MB, worker RSS peak {worker_rss.peak // MB} MB"
        f" for {CLIENTS} concurrent 7 MB bodies"
    )
    assert gateway_rss.growth < GATEWAY_GROWTH_LIMIT, f"gateway grew {gateway_rss.growth // MB} MB"
    assert worker_rss.peak < WORKER_RSS_LIMIT, f"worker peaked at {worker_rss.peak // MB} MB"


def start_trickle(gateway: Gateway, key: str, declared: int) -> socket.socket:
    """A client that announces a ``declared``-byte body and sends only its first bytes."""
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /v1/responses HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {declared}\r\n\r\n".encode()
        + b'{"model": "remote", "input": "'
    )
    return sock


def read_status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the gateway closed the connection without an answer"
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_trickling_clients_cannot_hold_the_budget(
    database: DatabaseURL,
    gateway_config: Path,
    key: str,
    tmp_path_factory: pytest.TempPathFactory,
):
    """Two clients announce 8 MB bodies and stall. Small calls go on; a large one gets a
    clear 503 after ``body_wait_s``; the stalled ones get 408 after ``body_read_timeout_s``,
    which frees the budget for the next large call."""
    directory = tmp_path_factory.mktemp("trickle")
    config = config_with(
        gateway_config,
        directory,
        body_wait_s=1.5,
        body_read_timeout_s=6,
        inflight_body_bytes=BUDGET,
    )
    gateway = start_gateway(
        database_url=database.libpq(), config=config, log=directory / "gateway.log"
    )
    sdk = openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=60)
    try:
        started = time.monotonic()
        stalled = [start_trickle(gateway, key, 8_000_000) for _ in range(2)]
        wait_until(
            lambda: large_bodies_held(gateway) == 16_000_000, "both stalled bodies to hold 16 MB"
        )

        small = sdk.responses.create(model="remote", input="small calls never wait")
        assert small.output_text == "echo: small calls never wait"

        with pytest.raises(openai.APIStatusError) as refused:
            sdk.responses.create(model="remote", input="x" * 1_000_000)
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"] == "1"
        error = refused.value.response.json()["error"]
        assert error["code"] == "server_busy" and "retry shortly" in error["message"]

        for sock in stalled:
            with sock:
                assert read_status(sock) == 408
        assert time.monotonic() - started < 30
        wait_until(lambda: large_bodies_held(gateway) == 0, "the stalled bodies' share back")

        large = sdk.responses.create(model="remote", input="y" * 1_000_000, service_tier="flex")
        assert large.status == "completed" and large.output_text == "echo: " + "y" * 1_000_000
    finally:
        gateway.process.stop()
