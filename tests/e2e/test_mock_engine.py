"""The mock upstream's engine mode as a real process (``tiergate mock-upstream --engine vllm
--scheduling-policy priority --capacity 2``), loaded directly by httpx clients, as load that
never goes through the gateway: an urgent call overtakes full slots by preemption, and
``/metrics`` shows the queue while it is overloaded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.testing.processes import start_mock_upstream

LATENCY_MS = 300
BULK_SLEEP_MS = 2500  # a bulk call needs 2.8 s of service time, an urgent one 0.3 s
DEADLINE_S = 30.0
LABELS = {"engine": "0", "model_name": "mock-model"}


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, process = start_mock_upstream(
        tmp_path_factory.mktemp("logs") / "mock-engine.log",
        latency_ms=LATENCY_MS,
        capacity=2,
        engine="vllm",
        scheduling_policy="priority",
    )
    yield url
    process.stop()


def _gauges(text: str) -> dict[str, float]:
    """The value of each labelled vLLM series (the parser checks the exposition format)."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels == LABELS
    }


async def _metrics_until(http: httpx.AsyncClient, done: Any, what: str) -> dict[str, float]:
    """Read ``/metrics`` until ``done(values)`` holds, failing after ``DEADLINE_S``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = await http.get("/metrics")
        assert r.status_code == 200, r.text
        values = _gauges(r.text)
        if done(values):
            return values
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {values}"
        await asyncio.sleep(0.02)


async def test_an_urgent_call_overtakes_full_slots_by_preemption(mock_url: str) -> None:
    async with httpx.AsyncClient(base_url=mock_url, timeout=DEADLINE_S) as http:
        assert (await http.post("/_mock/reset")).status_code == 200
        started = time.monotonic()
        finished: dict[str, float] = {}

        async def call(label: str, priority: int, sleep_ms: int) -> None:
            r = await http.post(
                "/v1/chat/completions",
                json={
                    "model": "mock-model",
                    "messages": [{"role": "user", "content": label}],
                    "priority": priority,
                },
                headers={"x-mock-behavior": f"sleep_ms={sleep_ms}"},
            )
            assert r.status_code == 200, r.text
            finished[label] = time.monotonic() - started

        bulk = [asyncio.create_task(call(f"bulk{i}", 20, BULK_SLEEP_MS)) for i in range(3)]
        overloaded = await _metrics_until(
            http,
            lambda v: v.get("vllm:num_requests_running") == 2.0,
            "both slots to hold a bulk call",
        )
        assert overloaded["vllm:num_requests_waiting"] == 1.0
        assert overloaded["vllm:kv_cache_usage_perc"] == 1.0
        assert overloaded["vllm:num_preemptions_total"] == 0.0

        sent = time.monotonic()
        await call("urgent", 0, 0)
        took = time.monotonic() - sent
        # It took a slot at once: its own 0.3 s, not the 2.8 s a slot would take to free.
        assert took < 1.5, took
        assert not any(task.done() for task in bulk)
        state = (await http.get("/_mock/engine")).json()
        assert state["preemptions"] >= 1
        # The preempted call has its slot back; the third bulk call still waits.
        assert (state["running"], state["waiting"]) == (2, 1)
        values = _gauges((await http.get("/metrics")).text)
        assert values["vllm:num_preemptions_total"] >= 1.0
        assert values["vllm:num_requests_waiting"] == 1.0

        await asyncio.gather(*bulk)
        assert finished["urgent"] < min(finished[f"bulk{i}"] for i in range(3))
        state = (await http.get("/_mock/engine")).json()
        assert state["by_priority"] == {"20": 3, "0": 1}
        assert (state["running"], state["waiting"]) == (0, 0)
        values = _gauges((await http.get("/metrics")).text)
        assert values["vllm:num_requests_running"] == values["vllm:num_requests_waiting"] == 0.0
        assert values["vllm:e2e_request_latency_seconds_count"] == 4.0
