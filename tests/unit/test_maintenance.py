"""Maintenance duties run, fail and log on their own (fake stores, no database)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy.exc

from app.metrics import Metrics
from app.settings import Limits
from app.store.batches import ExpiredBatches
from app.store.orphans import Requeued
from app.store.retention import Pruned
from worker.maintenance import Duty, Maintenance, run_duties

TICK_S = 0.01


class Calls:
    """What the fake stores were asked, in order; a name in ``fail`` raises its exception."""

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.log: list[str] = []
        self.fail = fail or {}

    def __call__(self, name: str, result: Any) -> Any:
        self.log.append(name)
        if name in self.fail:
            raise self.fail[name]
        return result

    def count(self, name: str) -> int:
        return self.log.count(name)


class Fake:
    """A store whose async methods record their call (``store.method``) and return a fixed
    result."""

    def __init__(self, calls: Calls, store: str, **results: Any) -> None:
        self.calls = calls
        self.store = store
        self.results = results

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in self.results:
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return self.calls(f"{self.store}.{method}", self.results[method])

        return call


def maintenance(calls: Calls, metrics: Metrics | None = None) -> tuple[Maintenance, Any]:
    """A maintenance on fake stores whose answers are all "nothing to do", and a fake job
    manager."""
    maint = Maintenance(
        limits=Limits(),
        requests=Fake(
            calls, "requests", expire_overdue=[], reap_realtime=[], rescue_claimed=([], [])
        ),
        batches=Fake(calls, "batches", expire_overdue=ExpiredBatches(batches=[], lines=[])),
        files=Fake(calls, "files", prune_abandoned=[]),
        orphans=Fake(calls, "orphans", requeue=Requeued(lines=[], batches=[])),
        retention=Fake(calls, "retention", prune=Pruned()),
        queue_depth=Fake(calls, "queue_depth", count_if_stale=False),
        cache=Fake(calls, "cache", prune_chunk=0),
        metrics=metrics,
    )
    return maint, Fake(calls, "jobs", get_stalled_jobs=[], prune_stalled_workers=[])


# Every statement of a pass, in the order of the single pass the duties replace.
PASS = [
    "jobs.get_stalled_jobs",
    "jobs.prune_stalled_workers",
    "requests.expire_overdue",
    "batches.expire_overdue",
    "files.prune_abandoned",
    "requests.reap_realtime",
    "requests.rescue_claimed",
    "orphans.requeue",
    "retention.prune",
    "cache.prune_chunk",
    "queue_depth.count_if_stale",
]


async def _run_until(duties: list[Duty], done: Callable[[], bool], metrics: Metrics | None) -> None:
    task = asyncio.create_task(run_duties(duties, TICK_S, metrics))
    try:
        for _ in range(500):  # 5 s at most
            if done():
                break
            await asyncio.sleep(TICK_S)
        else:
            raise AssertionError("the duties did not run enough")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failing_duty_neither_stops_nor_skips_the_others(caplog):
    outage = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("down"))
    calls = Calls(fail={"orphans.requeue": RuntimeError("a bug"), "requests.reap_realtime": outage})
    metrics = Metrics()
    maint, jobs = maintenance(calls, metrics)
    with caplog.at_level(logging.INFO, logger="tiergate.maintenance"):
        await _run_until(
            maint.duties(jobs), lambda: all(calls.count(c) >= 3 for c in PASS), metrics
        )

    assert calls.log[: len(PASS)] == PASS  # the first pass, in the order of old
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    bug = [r for r in failures if r.getMessage() == "maintenance requeue_orphans failed"]
    assert len(bug) >= 3 and all(r.exc_info for r in bug)  # a traceback, with the duty's name
    down = [r for r in failures if r.getMessage().startswith("maintenance reap_realtime skipped")]
    assert len(down) >= 3 and not any(r.exc_info for r in down)  # one line, no traceback
    assert {r.getMessage().split()[1] for r in failures} == {"requeue_orphans", "reap_realtime"}

    def failed(duty: str) -> float | None:
        return metrics.registry.get_sample_value(
            "tiergate_maintenance_failures_total", {"duty": duty}
        )

    assert failed("requeue_orphans") == len(bug)
    assert failed("reap_realtime") == len(down)
    assert failed("cache") == 0  # every duty has its series from the start


async def test_each_duty_keeps_its_own_interval():
    runs = {"often": 0, "seldom": 0}

    def duty(name: str, every_s: float | None) -> Duty:
        async def run() -> None:
            runs[name] += 1

        return Duty(name, run, every_s)

    await _run_until([duty("often", None), duty("seldom", 60.0)], lambda: runs["often"] >= 5, None)
    assert runs == {"often": runs["often"], "seldom": 1}


async def test_sweep_is_one_pass_without_the_job_rescue_and_raises():
    calls = Calls(fail={"retention.prune": RuntimeError("a bug")})
    maint, _ = maintenance(calls)
    with pytest.raises(RuntimeError):
        await maint.sweep()
    assert calls.log == PASS[2:9]  # no job rescue; nothing after the failure


def test_a_duty_interval_must_be_positive():
    with pytest.raises(ValueError, match="every_s"):
        Duty("nothing", lambda: asyncio.sleep(0), 0)


async def test_a_cancel_a_duty_swallowed_still_stops_the_loop():
    """Python 3.11's ``asyncio.wait_for`` (in the drivers' pools) can swallow a cancel that
    lands as its wait ends; the loop must stop all the same (the worker's restart after a
    database outage waits for it)."""
    entered = asyncio.Event()

    async def swallowing() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # as wait_for does when its inner future is already done

    loop = asyncio.create_task(run_duties([Duty("swallows", swallowing)], TICK_S))
    await entered.wait()
    loop.cancel()
    await asyncio.wait({loop}, timeout=2)
    assert loop.cancelled()
