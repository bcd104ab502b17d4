"""Routing among deployments: weights, load, health, fallback, pinning, waiting for room."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from app.settings import Settings
from app.upstream.router import NoCapacity, Router, UnknownDeployment
from app.vocabulary import DeploymentState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet(**limits: object) -> tuple[Router, Clock]:
    settings = Settings()
    settings.apply_config(
        {
            "models": [
                {
                    "name": "big",
                    "deployments": [
                        {"name": "a", "upstream": "http://a/v1", "weight": 2},
                        {"name": "b", "upstream": "http://b/v1", "max_concurrency": 1},
                    ],
                    "fallbacks": ["small"],
                },
                {"name": "small", "upstream": "http://c/v1", "upstream_model": "tiny"},
            ],
            "limits": {"health": {"failures_to_trip": 3, "cooldown_s": 5, **limits}},
        }
    )
    clock = Clock()
    return Router(settings, clock=clock, rng=random.Random(7)), clock


def test_idle_traffic_splits_by_weight():
    router, _ = fleet()
    served = Counter()
    for _ in range(3000):
        chosen = router.pick("big")
        assert chosen is not None
        router.begin(chosen)
        router.end(chosen)
        served[chosen.name] += 1
    assert abs(served["a"] / 3000 - 2 / 3) < 0.05


def test_busy_deployment_is_avoided_and_a_full_one_skipped():
    router, _ = fleet()
    a, b = router.fleets["big"].deployments
    router.begin(b)  # b is at its max_concurrency of 1
    assert {router.pick("big") for _ in range(50)} == {a}
    router.end(b)
    for _ in range(4):
        router.begin(a)  # a: 4 in flight / weight 2 = 2 per unit; b: 0
    picks = Counter(router.pick("big").name for _ in range(200))  # type: ignore[union-attr]
    assert picks["b"] > picks["a"]


def test_faults_take_a_deployment_out_then_one_probe_decides():
    router, clock = fleet()
    a, b = router.fleets["big"].deployments
    for _ in range(3):
        router.begin(a)
        router.end(a, fault="upstream_unreachable")
    assert a.health.state(clock.now) == DeploymentState.OUT
    assert {router.pick("big") for _ in range(50)} == {b}
    clock.now += 5.0  # the first cool-down
    assert a.health.state(clock.now) == DeploymentState.PROBING
    router.begin(a)  # the probe
    assert not a.health.usable(clock.now)  # one probe at a time
    router.end(a, fault="HTTP 503")
    assert a.health.out_until == clock.now + 10.0  # it doubled
    clock.now += 10.0
    router.begin(a)
    router.end(a)
    assert a.health.state(clock.now) == DeploymentState.HEALTHY


def test_cooldown_has_a_ceiling():
    router, clock = fleet(max_cooldown_s=12)
    a = router.fleets["big"].deployments[0]
    for _ in range(3):
        router.begin(a)
        router.end(a, fault="x")
    for _ in range(5):
        clock.now = a.health.out_until
        router.begin(a)
        router.end(a, fault="x")
    assert a.health.out_until - clock.now == 12


def test_429_rests_without_a_fault():
    router, clock = fleet()
    a = router.fleets["big"].deployments[0]
    router.begin(a)
    router.end(a, rest_s=2.0)
    assert a.health.state(clock.now) == DeploymentState.OUT and a.health.failures == 0
    clock.now += 2.0
    assert a.health.state(clock.now) == DeploymentState.HEALTHY


def test_fallback_model_when_no_deployment_is_usable():
    router, _ = fleet()
    a, b = router.fleets["big"].deployments
    chosen = router.pick("big", avoid=[a, b])
    assert chosen is not None and chosen.label("big") == "small/default"
    assert chosen.target_model == "tiny"


def test_pin_allows_only_that_deployment():
    router, _ = fleet()
    assert router.candidates("big", "b") == [router.fleets["big"].deployments[1]]
    with pytest.raises(UnknownDeployment):
        router.candidates("big", "z")


def test_acquire_waits_for_room_then_gives_up_with_no_capacity():
    async def scenario() -> None:
        router = Router(_settings_one_slot())
        (only,) = router.fleets["one"].deployments
        router.begin(only)
        waiter = asyncio.create_task(router.acquire("one", deadline=router.clock() + 5))
        await asyncio.sleep(0)
        assert not waiter.done()
        router.end(only)  # room again: the waiter gets it at once
        assert await asyncio.wait_for(waiter, 1) is only
        with pytest.raises(NoCapacity):
            await router.acquire("one", deadline=router.clock() + 0.05)
        router.end(only)
        assert await router.acquire("one", tried=[only], deadline=router.clock() + 1) is None

    asyncio.run(scenario())


def _settings_one_slot() -> Settings:
    settings = Settings()
    settings.apply_config(
        {
            "models": [
                {
                    "name": "one",
                    "deployments": [{"name": "x", "upstream": "http://x/v1", "max_concurrency": 1}],
                }
            ]
        }
    )
    return settings


def _settings_with_capacity() -> Settings:
    settings = Settings()
    settings.apply_config(
        {
            "models": [
                {
                    "name": "shared",
                    "deployments": [{"name": "gpu", "upstream": "http://g/v1", "capacity": 4}],
                }
            ]
        }
    )
    return settings


def test_deferred_calls_use_only_what_realtime_leaves():
    clock = Clock()
    router = Router(_settings_with_capacity(), clock=clock)
    (gpu,) = router.fleets["shared"].deployments
    for _ in range(3):
        router.begin(gpu, realtime=True)
    assert router.pick("shared", realtime=False) is gpu  # 4 - 3 realtime: room for one
    router.begin(gpu, realtime=False)
    assert router.pick("shared", realtime=False) is None
    assert router.pick("shared", realtime=True) is gpu  # realtime is never held back
    for _ in range(3):
        router.end(gpu, realtime=True)
    # The realtime burst is remembered for a few seconds, then its room goes back to flex.
    assert router.pick("shared", realtime=False) is None
    clock.now += 6
    assert router.pick("shared", realtime=False) is gpu
    assert gpu.deferred_room(clock.now) == 3


def test_other_processes_realtime_counts_too():
    clock = Clock()
    router = Router(_settings_with_capacity(), clock=clock)
    (gpu,) = router.fleets["shared"].deployments
    peer = {"model": "shared", "deployment": "gpu", "realtime_in_flight": 2}
    router.learn([[peer], [{**peer, "deferred_in_flight": 1}]])
    assert gpu.deferred_room(clock.now) == 4 - 4 - 1
    router.learn([])  # they went quiet (or away)
    assert gpu.deferred_room(clock.now) == 4
