"""The mock provider's engine mode (app/mock/engine.py): the scheduler's order, priority and
preemption, each engine's priority rules and refusals, its /metrics and the test controls."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cli.main import build_parser, cmd_mock_upstream
from app.mock.engine import (
    ENGINES,
    LLAMACPP_METRICS_OFF,
    SGLANG_REFUSAL,
    EngineScheduler,
    Served,
)
from app.mock.server import create_mock_app

T = TypeVar("T")
MODEL = "mock-model"
ABSENT = object()
DEADLINE_S = 5.0
SLACK_S = 0.1  # a step or two, and a busy machine
LOAD = {  # the engine's running, waiting and KV-use series, and their labels
    "vllm": (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        {"engine": "0", "model_name": MODEL},
    ),
    "sglang": (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        {"engine_type": "unified", "model_name": MODEL, "pp_rank": "0", "tp_rank": "0"},
    ),
    "llamacpp": ("llamacpp:requests_processing", "llamacpp:requests_deferred", None, {}),
}


def _client(**kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_mock_app(**kwargs))
    return httpx.AsyncClient(transport=transport, base_url="http://mock", timeout=30)


@pytest.fixture
async def vllm() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(engine="vllm") as c:
        yield c


async def _until(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str) -> T:
    """Poll ``probe`` until ``done`` holds, failing after ``DEADLINE_S``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value}"
        await asyncio.sleep(0.002)


def _body(path: str, priority: object) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "input": "hi"}
    if path == "/v1/chat/completions":
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    if priority is not ABSENT:
        body["priority"] = priority
    return body


async def _call(
    c: httpx.AsyncClient,
    priority: object = ABSENT,
    *,
    sleep_ms: int = 0,
    key: str | None = None,
    path: str = "/v1/chat/completions",
) -> httpx.Response:
    behavior = f"sleep_ms={sleep_ms}" + (f",key={key}" if key else "")
    return await c.post(path, json=_body(path, priority), headers={"x-mock-behavior": behavior})


async def _engine(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.get("/_mock/engine")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a Prometheus text by sample name (the parser checks the format)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name  # each family has its # HELP
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _recorder(order: list[str]) -> Callable[[str, Awaitable[T]], Coroutine[Any, Any, T]]:
    async def record(label: str, call: Awaitable[T]) -> T:
        result = await call
        order.append(label)
        return result

    return record


# -- the scheduler ----------------------------------------------------------------------


async def test_fcfs_serves_in_arrival_order_whatever_the_rank() -> None:
    scheduler = EngineScheduler(1, step_ms=2)
    order: list[str] = []
    record = _recorder(order)
    tasks = [
        asyncio.create_task(record(label, scheduler.serve(rank, 20, label)))
        for label, rank in (("a", 9), ("b", 0), ("c", 5))
    ]
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]
    assert scheduler.preemptions == 0 and scheduler.served == 3


async def test_priority_admits_the_lowest_rank_first_then_by_arrival() -> None:
    scheduler = EngineScheduler(1, step_ms=2, by_rank=True, preempt_margin=0)
    order: list[str] = []
    record = _recorder(order)
    first = asyncio.create_task(record("a", scheduler.serve(0, 80, "a")))

    async def running() -> int:
        return scheduler.running

    await _until(running, lambda n: n == 1, "a running")
    rest = [
        asyncio.create_task(record(label, scheduler.serve(rank, 5, label)))
        for label, rank in (("b", 5), ("c", 3), ("d", 5), ("e", 1))
    ]
    await asyncio.gather(first, *rest)
    assert order == ["a", "e", "c", "b", "d"]
    assert scheduler.preemptions == 0  # nothing beats rank 0


async def test_preemption_pauses_the_worst_call_and_resumes_it_with_its_progress() -> None:
    scheduler = EngineScheduler(1, step_ms=2, by_rank=True, preempt_margin=0)
    order: list[str] = []
    record = _recorder(order)
    low = asyncio.create_task(record("low", scheduler.serve(20, 300, "low")))

    async def calls() -> list[dict[str, Any]]:
        return scheduler.snapshot()

    await _until(calls, lambda c: c and c[0]["progress_ms"] >= 100, "low to make progress")
    high = asyncio.create_task(record("high", scheduler.serve(0, 150, "high")))
    states = await _until(calls, lambda c: len(c) == 2, "high to arrive")
    paused, running = states
    assert (paused["label"], paused["state"], paused["preemptions"]) == ("low", "waiting", 1)
    assert (running["label"], running["state"]) == ("high", "running")
    kept = paused["progress_ms"]
    assert kept >= 100
    # While high runs, the paused call makes no progress.
    states = await _until(calls, lambda c: c[1]["progress_ms"] >= 100, "high to make progress")
    assert states[0]["state"] == "waiting" and states[0]["progress_ms"] == kept
    done_low, done_high = await asyncio.gather(low, high)
    assert order == ["high", "low"]
    assert done_high.preemptions == 0 and done_high.waited_s < SLACK_S  # it took a slot at once
    # The resumed call needed only what it had left: in all it ran its 300 ms, not more.
    assert done_low.preemptions == 1
    assert 0.3 <= done_low.ran_s < 0.3 + SLACK_S
    assert done_low.waited_s >= 0.15  # paused while high ran
    assert scheduler.preemptions == 1 and scheduler.by_priority == {"low": 1, "high": 1}


async def test_a_preemption_needs_more_than_the_margin() -> None:
    scheduler = EngineScheduler(1, step_ms=2, by_rank=True, preempt_margin=10)
    first = asyncio.create_task(scheduler.serve(0, 200, "first"))

    async def running() -> int:
        return scheduler.running

    await _until(running, lambda n: n == 1, "first running")
    close = asyncio.create_task(scheduler.serve(-10, 0, "close"))

    async def waiting() -> int:
        return scheduler.waiting

    await _until(waiting, lambda n: n == 1, "close to wait")
    assert (scheduler.running, scheduler.preemptions) == (1, 0)  # a margin of 10 is not more
    far = await scheduler.serve(-11, 0, "far")
    assert far.preemptions == 0 and scheduler.preemptions == 1
    await asyncio.gather(first, close)


async def test_a_cancelled_call_frees_its_slot() -> None:
    scheduler = EngineScheduler(1, step_ms=2)
    stuck = asyncio.create_task(scheduler.serve(0, 60_000, "stuck"))
    queued = asyncio.create_task(scheduler.serve(0, 10, "queued"))

    async def waiting() -> int:
        return scheduler.waiting

    await _until(waiting, lambda n: n == 1, "the second call to wait")
    stuck.cancel()
    served = await asyncio.wait_for(queued, DEADLINE_S)
    assert isinstance(served, Served) and scheduler.running == scheduler.waiting == 0
    with pytest.raises(asyncio.CancelledError):
        await stuck


# -- priority rules per engine ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"])
async def test_vllm_fcfs_refuses_a_priority_as_vllm_does(
    vllm: httpx.AsyncClient, path: str
) -> None:
    r = await _call(vllm, 5, key="refused", path=path)
    assert r.status_code == 400
    assert r.json() == {
        "object": "error",
        "message": "Got priority 5 but Priority scheduling is not enabled.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    (attempt,) = (await vllm.get("/_mock/attempts/refused")).json()["attempts"]
    assert attempt["status"] == 400 and attempt["body"]["priority"] == 5
    for ok in (0, ABSENT):  # vLLM's default priority is 0
        assert (await _call(vllm, ok, path=path)).status_code == 200
    state = await _engine(vllm)
    assert state["served"] == 2 and state["by_priority"] == {"0": 2}


async def test_vllm_without_refusal_ignores_the_priority(vllm: httpx.AsyncClient) -> None:
    """``refuse_priority: false``: as vLLM's V1 engine, which serves it first come first."""
    r = await vllm.post("/_mock/engine", json={"refuse_priority": False})
    assert r.status_code == 200 and r.json()["refuse_priority"] is False
    assert (await _call(vllm, 5)).status_code == 200
    assert (await _engine(vllm))["by_priority"] == {"5": 1}


async def test_a_priority_must_be_an_integer(vllm: httpx.AsyncClient) -> None:
    for bad in ("high", 1.5, True):
        r = await _call(vllm, bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "priority", bad


async def test_vllm_priority_serves_lower_values_first_and_preempts() -> None:
    async with _client(engine="vllm", scheduling_policy="priority", capacity=1) as c:
        order: list[str] = []
        record = _recorder(order)
        slow = asyncio.create_task(record("slow", _call(c, 20, sleep_ms=400)))
        await _until(lambda: _engine(c), lambda s: s["running"] == 1, "the slow call to run")
        later = asyncio.create_task(record("later", _call(c, 30, sleep_ms=20)))
        await _until(lambda: _engine(c), lambda s: s["waiting"] == 1, "a call to wait")
        urgent = await record("urgent", _call(c, -1, sleep_ms=20))
        assert urgent.status_code == 200
        await asyncio.gather(slow, later)
        assert order == ["urgent", "slow", "later"]
        state = await _engine(c)
        assert state["preemptions"] == 1
        assert state["by_priority"] == {"-1": 1, "20": 1, "30": 1}


async def test_sglang_priority_serves_larger_values_first_past_a_threshold() -> None:
    """SGLang's ``--enable-priority-scheduling``: larger first, no priority last, and an
    arrival preempts only a call more than 10 below it."""
    async with _client(engine="sglang", scheduling_policy="priority", capacity=1) as c:
        order: list[str] = []
        record = _recorder(order)
        long = asyncio.create_task(record("p0", _call(c, 0, sleep_ms=300)))
        await _until(lambda: _engine(c), lambda s: s["running"] == 1, "p0 to run")
        tasks = [long]
        for waiting, (label, priority) in enumerate((("none", ABSENT), ("p10", 10)), start=1):
            tasks.append(asyncio.create_task(record(label, _call(c, priority, sleep_ms=10))))
            await _until(lambda: _engine(c), lambda s, n=waiting: s["waiting"] == n, label)
        assert (await _engine(c))["preemptions"] == 0  # 10 above p0 is not enough
        await record("p11", _call(c, 11, sleep_ms=10))
        await asyncio.gather(*tasks)
        assert order == ["p11", "p10", "p0", "none"]
        state = await _engine(c)
        assert state["preemptions"] == 1
        assert state["by_priority"] == {"0": 1, "none": 1, "10": 1, "11": 1}


async def test_sglang_fcfs_ignores_a_priority_unless_told_to_abort() -> None:
    async with _client(engine="sglang") as c:
        assert (await _call(c, 5)).status_code == 200
        r = await c.post("/_mock/engine", json={"refuse_priority": True})
        assert r.status_code == 200
        # --abort-on-priority-when-disabled: any priority, 0 too, is refused; none is not.
        r = await _call(c, 0, key="aborted")
        assert r.status_code == 503
        assert r.json() == {
            "object": "error",
            "message": SGLANG_REFUSAL,
            "type": "503",
            "param": None,
            "code": 503,
        }
        r = await _call(c, 7, path="/v1/responses")
        assert r.status_code == 503
        assert r.json()["error"] == {
            "message": SGLANG_REFUSAL,
            "type": "Service Unavailable",
            "param": None,
            "code": 503,
        }
        assert (await _call(c)).status_code == 200
        (attempt,) = (await c.get("/_mock/attempts/aborted")).json()["attempts"]
        assert attempt["status"] == 503
        assert (await _engine(c))["by_priority"] == {"5": 1, "none": 1}


async def test_llamacpp_ignores_the_priority_field() -> None:
    async with _client(engine="llamacpp") as c:
        for priority in (5, "high"):
            assert (await _call(c, priority)).status_code == 200
        assert (await _engine(c))["by_priority"] == {"0": 2}
    with pytest.raises(ValueError, match="no priority scheduling"):
        create_mock_app(engine="llamacpp", scheduling_policy="priority")


# -- /metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_metrics_report_the_calls_running_and_waiting(engine: str) -> None:
    running_name, waiting_name, kv_name, labels = LOAD[engine]
    async with _client(engine=engine, capacity=2) as c:
        calls = [asyncio.create_task(_call(c, sleep_ms=300)) for _ in range(5)]
        await _until(lambda: _engine(c), lambda s: s["waiting"] == 3, "three calls waiting")
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert f"# TYPE {running_name} gauge" in r.text
        samples = _samples(r.text)
        assert samples[running_name] == [(labels, 2.0)]
        assert samples[waiting_name] == [(labels, 3.0)]
        if kv_name is not None:
            assert samples[kv_name] == [(labels, 1.0)]
        else:  # llama.cpp's server publishes no KV-cache series
            assert not [name for name in samples if "kv" in name]
        assert all(r.status_code == 200 for r in await asyncio.gather(*calls))
        samples = _samples((await c.get("/metrics")).text)
        assert samples[running_name][0][1] == samples[waiting_name][0][1] == 0.0
        if engine == "vllm":
            stop = {**labels, "finished_reason": "stop"}
            assert (stop, 5.0) in samples["vllm:request_success_total"]
            assert samples["vllm:e2e_request_latency_seconds_count"] == [(labels, 5.0)]
        elif engine == "sglang":
            assert samples["sglang:num_requests_total"] == [({"model_name": MODEL}, 5.0)]
        else:
            assert samples["llamacpp:tokens_predicted_total"] == [({}, 20.0)]
            assert samples["llamacpp:n_decode_total"][0][1] > 0


async def test_kv_use_is_running_calls_over_slots() -> None:
    async with _client(engine="vllm", capacity=4) as c:
        call = asyncio.create_task(_call(c, sleep_ms=200))
        await _until(lambda: _engine(c), lambda s: s["running"] == 1, "a call running")
        samples = _samples((await c.get("/metrics")).text)
        assert samples["vllm:kv_cache_usage_perc"][0][1] == 0.25
        assert (await call).status_code == 200


async def test_controls_add_load_and_override_the_kv_use(vllm: httpx.AsyncClient) -> None:
    controls = {"extra_waiting": 7, "extra_running": 2, "kv_cache": 0.9}
    r = await vllm.post("/_mock/engine", json=controls)
    assert r.status_code == 200
    state = r.json()
    assert {k: state[k] for k in controls} == controls
    assert state["published"] == {"running": 2, "waiting": 7, "kv_cache": 0.9}
    assert (state["running"], state["waiting"]) == (0, 0)  # no real calls
    samples = _samples((await vllm.get("/metrics")).text)
    assert samples["vllm:num_requests_running"][0][1] == 2.0
    assert samples["vllm:num_requests_waiting"][0][1] == 7.0
    assert samples["vllm:kv_cache_usage_perc"][0][1] == 0.9
    await vllm.post("/_mock/engine", json={"kv_cache": None})  # back to running over slots
    samples = _samples((await vllm.get("/metrics")).text)
    assert samples["vllm:kv_cache_usage_perc"][0][1] == 2 / 8


async def test_metrics_faults(vllm: httpx.AsyncClient) -> None:
    await vllm.post("/_mock/engine", json={"metrics": "garbage"})
    r = await vllm.get("/metrics")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        _samples(r.text)
    await vllm.post("/_mock/engine", json={"metrics": "missing"})
    samples = _samples((await vllm.get("/metrics")).text)
    for name in LOAD["vllm"][:3]:
        assert name not in samples
    assert "vllm:num_preemptions_total" in samples
    await vllm.post("/_mock/engine", json={"metrics": "error"})
    assert (await vllm.get("/metrics")).status_code == 500
    await vllm.post("/_mock/engine", json={"metrics": "disabled"})
    assert (await vllm.get("/metrics")).status_code == 404


async def test_llamacpp_metrics_off_answers_as_without_its_metrics_flag() -> None:
    async with _client(engine="llamacpp") as c:
        await c.post("/_mock/engine", json={"metrics": "disabled"})
        r = await c.get("/metrics")
        assert r.status_code == 501
        assert r.json()["error"]["message"] == LLAMACPP_METRICS_OFF


async def test_reset_restores_the_controls_and_zeroes_the_counts() -> None:
    async with _client(engine="sglang", scheduling_policy="priority", capacity=1) as c:
        assert (await _call(c, 3)).status_code == 200
        await c.post("/_mock/engine", json={"extra_waiting": 4, "metrics": "error"})
        assert (await c.post("/_mock/reset")).status_code == 200
        state = await _engine(c)
        assert (state["served"], state["preemptions"], state["by_priority"]) == (0, 0, {})
        assert (state["extra_waiting"], state["metrics"], state["kv_cache"]) == (0, "ok", None)
        assert state["refuse_priority"] is False
        samples = _samples((await c.get("/metrics")).text)
        assert samples["sglang:e2e_request_latency_seconds_count"][0][1] == 0.0


@pytest.mark.parametrize(
    "payload",
    [
        {"extra_waiting": -1},
        {"extra_waiting": 1.5},
        {"extra_running": "2"},
        {"extra_running": True},
        {"kv_cache": 1.5},
        {"kv_cache": -0.1},
        {"kv_cache": "0.5"},
        {"kv_cache": True},
        {"metrics": "broken"},
        {"refuse_priority": 1},
        {"bogus": 1},
        {"extra_waiting": 3, "kv_cache": 2},
        [],
    ],
)
async def test_bad_control_values_are_a_400_and_set_nothing(
    vllm: httpx.AsyncClient, payload: Any
) -> None:
    r = await vllm.post("/_mock/engine", json=payload)
    assert r.status_code == 400, payload
    assert r.json()["error"]["message"]
    state = await _engine(vllm)
    assert (state["extra_waiting"], state["extra_running"], state["kv_cache"]) == (0, 0, None)
    assert (state["metrics"], state["refuse_priority"]) == ("ok", True)


# -- without an engine, and the options ---------------------------------------------------


async def test_without_an_engine_there_is_no_metrics_endpoint() -> None:
    async with _client(capacity=2) as c:
        assert (await c.get("/metrics")).status_code == 404
        assert (await c.get("/_mock/engine")).status_code == 404
        assert (await _call(c, 5)).status_code == 200  # the field means nothing here


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine": "tgi"}, "engine must be one of"),
        ({"scheduling_policy": "priority"}, "needs an engine"),
        ({"engine": "vllm", "scheduling_policy": "lifo"}, "scheduling_policy must be"),
        ({"engine": "vllm", "step_ms": 0}, "step_ms"),
    ],
)
def test_bad_engine_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_mock_app(**kwargs)


def test_cli_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["mock-upstream", "--engine", "sglang", "--scheduling-policy", "priority"]
    )
    assert (args.engine, args.scheduling_policy, args.step_ms) == ("sglang", "priority", 5.0)
    args = build_parser().parse_args(["mock-upstream"])
    assert (args.engine, args.scheduling_policy) == (None, "fcfs")
    bad = ["mock-upstream", "--engine", "llamacpp", "--scheduling-policy", "priority"]
    args = build_parser().parse_args(bad)
    assert cmd_mock_upstream(cast(argparse.Namespace, args), cast(Any, None)) == 2
    assert "llamacpp has no priority scheduling" in capsys.readouterr().err
