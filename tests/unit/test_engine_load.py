"""Deferred work follows the engine's own load and priorities: reading an engine's metrics,
the room they leave, the priority field per kind of call, and how all of it is shown."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import httpx
import pytest
from pydantic import ValidationError

from app.cli.deployments import as_json, as_text
from app.metrics import Metrics
from app.settings import DeploymentConfig, EngineLoad, Settings
from app.upstream.client import _refused, prepare_body
from app.upstream.engine_metrics import BadMetrics, EngineReading, parse_metrics
from app.upstream.engine_reader import EngineReader
from app.upstream.engine_watch import PRIORITY_RETRY_S, EngineWatch
from app.upstream.router import Router
from app.vocabulary import CallClass, EngineKind

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 1.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.5
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="llama"} 12.0
vllm:e2e_request_latency_seconds_sum{model_name="llama"} NaN
vllm:prompt_tokens_total{model_name="llama"} 1234.0
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings_with(**deployment: object) -> Settings:
    settings = Settings()
    settings.apply_config(
        {
            "models": [
                {
                    "name": "llama",
                    "deployments": [
                        {"name": "gpu", "upstream": "http://gpu:8000/v1", **deployment},
                    ],
                }
            ]
        }
    )
    return settings


def router_with(**deployment: object) -> tuple[Router, Clock]:
    clock = Clock()
    return Router(settings_with(**deployment), clock=clock, rng=random.Random(1)), clock


# --- parsing -------------------------------------------------------------------------------


def test_vllm_metrics_sum_running_and_waiting_over_engines_and_take_the_fullest_cache():
    assert parse_metrics(EngineKind.VLLM, VLLM) == EngineReading(5, 1, 0.5)


def test_older_vllm_cache_series_and_engines_without_one():
    old = "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.7"
    assert parse_metrics(EngineKind.VLLM, old) == EngineReading(1, 0, 0.7)
    llama = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 3 1700000000000\n"
    assert parse_metrics(EngineKind.LLAMACPP, llama) == EngineReading(2, 3, None)


def test_sglang_series():
    text = (
        'sglang:num_running_reqs{model_name="m"} 4\n'
        'sglang:num_queue_reqs{model_name="m"} 0\n'
        'sglang:token_usage{model_name="m"} 0.12\n'
    )
    assert parse_metrics(EngineKind.SGLANG, text) == EngineReading(4, 0, 0.12)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("<html>502 Bad Gateway</html>", "no vllm:num_requests_running"),
        ("vllm:num_requests_running 1\n", "no vllm:num_requests_waiting"),
        ('vllm:num_requests_running{a="b"} lots\nvllm:num_requests_waiting 0', "unparseable"),
        ("vllm:num_requests_running -1\nvllm:num_requests_waiting 0", "not a count"),
        ("vllm:num_requests_running NaN\nvllm:num_requests_waiting 0", "not a count"),
        (
            "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 41",
            "KV-cache use above 1",
        ),
        ("sglang:num_running_reqs 1\nsglang:num_queue_reqs 0", "no vllm:num_requests_running"),
    ],
)
def test_metrics_that_lie_are_refused_with_a_reason(text: str, why: str):
    with pytest.raises(BadMetrics, match=why):
        parse_metrics(EngineKind.VLLM, text)


# --- the watch -----------------------------------------------------------------------------


def watch(**config: object) -> EngineWatch:
    return EngineWatch(EngineKind.VLLM, EngineLoad.model_validate(config))


def test_room_grows_by_the_ramp_holds_when_the_cache_is_full_and_gives_back_what_waits():
    w = watch(ramp=4)
    assert w.room(1000.0, 0) is None  # not read yet: declared capacity rules
    assert w.state(1000.0)["error"] == "not read yet"
    assert w.read(EngineReading(2, 0, 0.1), 1000.0, deferred_in_flight=0)
    assert w.room(1000.0, 0) == 4
    assert w.room(1000.0, 3) == 1
    assert w.read(EngineReading(6, 0, 0.2), 1000.5, deferred_in_flight=4)
    assert w.room(1000.5, 4) == 4  # 8 allowed now
    assert not w.read(EngineReading(8, 0, 0.95), 1001.0, deferred_in_flight=8)  # KV full
    assert w.room(1001.0, 8) == 0  # no more starts, none given back
    assert not w.read(EngineReading(8, 3, 0.5), 1001.5, deferred_in_flight=8)
    assert w.room(1001.5, 8) == -3  # 3 wait: 3 of its slots go back as its calls end
    assert not w.read(EngineReading(8, 50, 0.5), 1002.0, deferred_in_flight=8)
    assert w.room(1002.0, 8) == -8  # a flood: every deferred slot is given back


def test_the_waiting_and_cache_thresholds_are_configurable():
    w = watch(max_waiting=2, max_kv_cache=0.5)
    assert w.has_room(EngineReading(1, 2, 0.49))
    assert not w.has_room(EngineReading(1, 3, 0.1))
    assert not w.has_room(EngineReading(1, 0, 0.5))


def test_a_failed_or_stale_reading_falls_back_and_says_why():
    w = watch(read_every_s=0.5, timeout_s=1)
    w.read(EngineReading(0, 0, 0.0), 1000.0, 0)
    assert w.failed("cannot read http://gpu:8000/metrics: connection refused")
    assert not w.failed("again")  # not news twice
    assert w.room(1000.1, 0) is None
    state = w.state(1000.1)
    assert state["ok"] is False and state["error"] == "again" and state["failures"] == 2
    w.read(EngineReading(0, 0, 0.0), 1001.0, 0)
    assert w.state(1001.0)["ok"] is True
    assert w.room(1003.6, 0) is None  # 3 intervals + the timeout without a reading
    assert w.state(1003.6)["error"] == "the last reading is stale"


def test_a_priority_refusal_lasts_a_while_then_priority_is_tried_again():
    w = watch()
    assert w.refuse_priority(10.0)
    assert not w.refuse_priority(11.0)
    assert w.priority_refused(10.0 + PRIORITY_RETRY_S)
    assert not w.priority_refused(11.0 + PRIORITY_RETRY_S)


# --- the deployment and the router ---------------------------------------------------------


def test_deferred_room_is_the_lesser_of_declared_capacity_and_the_engine():
    router, clock = router_with(engine="vllm", capacity=10, engine_load={"ramp": 3})
    gpu = router.fleets["llama"].deployments[0]
    assert gpu.engine is not None
    assert gpu.deferred_room(clock.now) == 10  # not read yet: the declared capacity
    gpu.engine.read(EngineReading(0, 0, 0.0), clock.now, 0)
    assert gpu.deferred_room(clock.now) == 3
    gpu.engine.read(EngineReading(0, 0, 0.0), clock.now, 9)
    for _ in range(9):
        router.begin(gpu, realtime=False)
    assert gpu.deferred_room(clock.now) == 1  # the engine allows 3 more, capacity 1
    gpu.engine.failed("garbage")
    assert gpu.deferred_room(clock.now) == 1


def test_the_engine_alone_bounds_deferred_calls_and_never_realtime_ones():
    router, clock = router_with(engine="vllm")
    gpu = router.fleets["llama"].deployments[0]
    assert gpu.engine is not None
    assert router.pick("llama", realtime=False) is gpu  # unread, no capacity: no bound
    gpu.engine.read(EngineReading(4, 3, 0.2), clock.now, 0)  # the engine queues
    assert router.pick("llama", realtime=False) is None
    assert router.pick("llama", realtime=True) is gpu


def test_a_deferred_call_waiting_for_room_starts_when_a_reading_leaves_some():
    router, clock = router_with(engine="vllm")
    gpu = router.fleets["llama"].deployments[0]
    assert gpu.engine is not None
    gpu.engine.read(EngineReading(4, 3, 0.2), clock.now, 0)

    async def scenario() -> None:
        waiter = asyncio.create_task(
            router.acquire("llama", deadline=clock.now + 60, realtime=False)
        )
        await asyncio.sleep(0)
        assert not waiter.done()
        assert gpu.engine is not None
        if gpu.engine.read(EngineReading(4, 0, 0.2), clock.now, 0):
            router.wake()
        assert await asyncio.wait_for(waiter, 5) is gpu

    asyncio.run(scenario())


def test_without_an_engine_nothing_changes():
    router, clock = router_with(capacity=4)
    gpu = router.fleets["llama"].deployments[0]
    assert gpu.engine is None
    assert gpu.deferred_room(clock.now) == 4
    assert gpu.priority_of(CallClass.BATCH, clock.now) is None
    assert "engine" not in gpu.snapshot(clock.now)


# --- priorities ----------------------------------------------------------------------------

PRIORITY = {"realtime": 0, "flex": 10, "batch": 20}


def test_each_kind_of_call_carries_its_priority_and_background_defaults_to_flex():
    router, clock = router_with(engine="vllm", priority=PRIORITY)
    gpu = router.fleets["llama"].deployments[0]
    given = {call: gpu.priority_of(call, clock.now) for call in CallClass}
    assert given == {
        CallClass.REALTIME: 0,
        CallClass.FLEX: 10,
        CallClass.BACKGROUND: 10,
        CallClass.BATCH: 20,
    }
    router, clock = router_with(engine="sglang", priority={**PRIORITY, "background": 15})
    assert router.fleets["llama"].deployments[0].priority_of(CallClass.BACKGROUND, 0) == 15
    body = prepare_body(gpu, {"model": "llama", "input": "x", "service_tier": "flex"}, "", None, 10)
    assert body == {"model": "llama", "input": "x", "priority": 10}


def test_a_refusal_is_recognized_and_the_priority_dropped_for_a_while():
    router, _ = router_with(engine="vllm", priority=PRIORITY)
    gpu = router.fleets["llama"].deployments[0]
    vllm = b'{"error": {"message": "Got priority 10 but Priority scheduling is not enabled."}}'
    assert not _refused(gpu, 400, b'{"error": {"message": "input too long"}}')
    assert not _refused(gpu, 500, vllm)
    assert _refused(gpu, 400, vllm)
    sglang = (
        b'{"object": "error", "message": "Using priority is disabled for this server.'
        b' Please send a new request without a priority."}'
    )
    assert _refused(gpu, 503, sglang)
    assert not _refused(gpu, 503, b'{"error": {"message": "overloaded"}}')
    assert gpu.priority_of(CallClass.FLEX, time.monotonic()) is None
    assert gpu.snapshot(time.monotonic())["engine"]["priority_refused"] is True


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"engine": "llamacpp", "priority": PRIORITY}, "priority needs engine: vllm or sglang"),
        ({"priority": PRIORITY}, "priority needs engine"),
        ({"metrics_url": "http://gpu:9000/metrics"}, "metrics_url needs engine"),
        ({"engine": "vllm", "metrics_url": "gpu:9000"}, "metrics_url must be an http"),
        ({"engine": "vllm", "upstream": "mock"}, "engine needs an http"),
        ({"engine": "tgi"}, "Input should be 'none', 'vllm', 'sglang' or 'llamacpp'"),
        ({"engine": "vllm", "priority": {"realtime": 0}}, "Field required"),
        ({"engine": "vllm", "engine_load": {"max_kv_cache": 1.5}}, "less than or equal to 1"),
    ],
)
def test_engine_config_errors(given: dict[str, object], error: str):
    with pytest.raises(ValidationError, match=error):
        DeploymentConfig.model_validate({"name": "gpu", "upstream": "http://gpu:8000/v1", **given})


def test_the_metrics_live_beside_v1_unless_given():
    config = DeploymentConfig(name="gpu", upstream="http://gpu:8000/v1", engine="vllm")
    assert config.engine_metrics_url() == "http://gpu:8000/metrics"
    config = DeploymentConfig(
        name="gpu", upstream="http://gpu:8000/v1", engine="vllm", metrics_url="http://m:9/x"
    )
    assert config.engine_metrics_url() == "http://m:9/x"


# --- the reader ----------------------------------------------------------------------------


def reader_for(handler: object, **deployment: object) -> tuple[EngineReader, Router]:
    router = Router(settings_with(engine="vllm", **deployment))
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return EngineReader(router, client=client), router


def test_the_reader_reads_the_root_metrics_with_the_deployments_key(monkeypatch):
    monkeypatch.setenv("GPU_KEY", "sk-gpu")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=VLLM)

    reader, _ = reader_for(handler, api_key_env="GPU_KEY")
    gpu = reader.deployments[0]
    asyncio.run(reader.read_once(reader._client, gpu))  # type: ignore[arg-type]
    assert str(seen[0].url) == "http://gpu:8000/metrics"
    assert seen[0].headers["authorization"] == "Bearer sk-gpu"
    assert gpu.engine is not None and gpu.engine.reading == EngineReading(5, 1, 0.5)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (httpx.Response(500, text="oops"), "http://gpu:8000/metrics answered 500"),
        (httpx.Response(200, text="garbage"), "no vllm:num_requests_running"),
    ],
)
def test_the_reader_records_what_went_wrong_without_the_urls_password(
    answer: httpx.Response, why: str, caplog: pytest.LogCaptureFixture
):
    reader, _ = reader_for(
        lambda request: answer, metrics_url="http://user:secret@gpu:8000/metrics"
    )
    gpu = reader.deployments[0]
    with caplog.at_level(logging.WARNING, logger="tiergate.engine"):
        asyncio.run(reader.read_once(reader._client, gpu))  # type: ignore[arg-type]
    assert gpu.engine is not None and gpu.engine.error is not None
    assert why in gpu.engine.error and "secret" not in gpu.engine.error
    assert "declared capacity" in caplog.text and "secret" not in caplog.text


def test_a_process_without_engine_deployments_reads_nothing():
    router = Router(settings_with())
    reader = EngineReader(router)
    assert reader.deployments == []
    asyncio.run(asyncio.wait_for(reader.run(), 1))  # returns at once


# --- shown ---------------------------------------------------------------------------------


def snapshot_with(**deployment: object) -> tuple[Settings, Router, Clock]:
    settings = settings_with(**deployment)
    clock = Clock()
    return settings, Router(settings, clock=clock), clock


def test_metrics_export_the_engine_state():
    _, router, clock = snapshot_with(engine="vllm", priority=PRIORITY)
    gpu = router.fleets["llama"].deployments[0]
    assert gpu.engine is not None
    gpu.engine.read(EngineReading(5, 1, 0.5), clock.now, 0)
    metrics = Metrics()
    metrics.watch_deployments(router.snapshot)
    text = metrics.render([], None, 0).decode()
    labels = '{deployment="gpu",model="llama"}'
    assert f"tiergate_engine_metrics_ok{labels} 1.0" in text
    assert f"tiergate_engine_requests_waiting{labels} 1.0" in text
    assert f"tiergate_engine_kv_cache_usage{labels} 0.5" in text
    assert f"tiergate_engine_priority_refused{labels} 0.0" in text
    gpu.engine.failed("garbage")
    text = metrics.render([], None, 0).decode()
    assert f"tiergate_engine_metrics_ok{labels} 0.0" in text
    assert "tiergate_engine_requests_waiting{" not in text
    assert f"tiergate_engine_metrics_failures_total{labels} 1.0" in text


def test_tiergate_deployments_shows_the_engine_and_a_fallback():
    settings, router, clock = snapshot_with(engine="vllm", priority=PRIORITY)
    gpu = router.fleets["llama"].deployments[0]
    assert gpu.engine is not None
    gpu.engine.read(EngineReading(3, 0, 0.41), clock.now, 0)
    views = [{"id": "wk_1", "last_seen_at": "now", "deployments": router.snapshot()}]
    text = as_text(settings, views, [])
    assert "ENGINE" in text.splitlines()[1]
    assert "vllm: 3 running, 0 waiting, KV 41%; priority realtime=0, flex=10," in text
    gpu.engine.failed("no vllm:num_requests_running series in the metrics")
    gpu.engine.refuse_priority(clock.now)
    views = [{"id": "wk_1", "last_seen_at": "now", "deployments": router.snapshot()}]
    text = as_text(settings, views, [])
    assert (
        "vllm: metrics unusable (no vllm:num_requests_running series in the metrics);"
        " declared capacity rules; priority refused"
    ) in text
    (facts,) = [d for d in as_json(settings, views, [])["deployments"] if d["model"] == "llama"]
    assert facts["engine"]["metrics_url"] == "http://gpu:8000/metrics"
    assert facts["engine"]["priority"] == {
        "realtime": 0,
        "flex": 10,
        "background": 10,
        "batch": 20,
    }
    assert facts["engine"]["priority_refused"] is True


def test_without_engines_the_table_has_no_engine_column():
    settings, router, _ = snapshot_with()
    text = as_text(
        settings, [{"id": "wk_1", "last_seen_at": "now", "deployments": router.snapshot()}], []
    )
    assert "ENGINE" not in text
