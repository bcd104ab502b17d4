"""Flex yields to realtime: one deployment's capacity shared by realtime calls and a batch.

The mock provider runs with ``--capacity 32`` (calls beyond 32 queue inside it, so latency
grows, as a saturated vLLM's does) and ``--latency-ms 100``. Three phases, each on a fresh
database and gateway (with its in-process worker), same processes otherwise:

1. realtime alone: ``--realtime`` closed-loop clients (default 16, half the capacity) for
   ``--seconds``; realtime p50 and p99;
2. feature on (the deployment declares ``capacity: 32``): the same realtime load while a
   ``--lines`` batch (default 10,000) runs from submission to completion; realtime p50 and
   p99 meanwhile, and the batch's lines per second against the spare capacity
   ((32 - realtime clients) / latency);
3. feature off (no ``capacity``): the same as 2.

Targets: with the feature on, realtime p50 and p99 within 1.25x of realtime alone, and the
batch using at least 70 % of the spare capacity.

``--engine``: load that bypasses tiergate. The mock runs as a vLLM engine with its priority
scheduler (``--engine vllm --scheduling-policy priority``: /metrics with vLLM's series, the
``priority`` field honoured with preemption); ``--bypass`` closed-loop clients (default 8)
call it directly while ``--realtime`` clients (default 8) call through tiergate. Phases:
alone (no batch); then with the batch: the engine's metrics and priorities (``engine: vllm``,
``priority:``), the metrics alone, the declared ``capacity`` alone (it cannot see the
bypassing load), nothing. Targets: the bypassing and the realtime clients' p50/p99 within
1.25x of alone, and the batch using at least 80 % of the capacity they leave.

Usage: python bench/yielding.py [--realtime N] [--lines N] [--seconds S] [--capacity C]
       [--engine [--bypass N]]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.testing.batches import timed_chat_batch
from app.testing.config import write_config
from app.testing.postgres import database_server
from app.testing.processes import Process, create_key, start_gateway, start_mock_upstream

MODEL = "shared"
LATENCY_MS = 100.0


@dataclass
class Phase:
    """One phase's figures."""

    name: str
    realtime_p50_ms: float = 0.0
    realtime_p99_ms: float = 0.0
    realtime_calls: int = 0
    batch_lines_per_s: float = 0.0
    batch_s: float = 0.0
    bypass_p50_ms: float = 0.0
    bypass_p99_ms: float = 0.0
    bypass_calls: int = 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def realtime_load(
    api: str, key: str, clients: int, stop: asyncio.Event, model: str = MODEL
) -> list[float]:
    """Closed-loop chat calls from ``clients`` loops until ``stop``; latencies in ms."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": model, "messages": [{"role": "user", "content": "realtime"}]}
    took: list[float] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def loop() -> None:
        async with httpx.AsyncClient(base_url=api, timeout=60, limits=limits) as client:
            while not stop.is_set():
                started = time.perf_counter()
                response = await client.post("/chat/completions", json=body, headers=headers)
                response.raise_for_status()
                took.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return took


async def phase(
    name: str,
    api: str,
    key: str,
    clients: int,
    seconds: float,
    lines: int,
    *,
    bypass_api: str | None = None,
    bypass: int = 0,
) -> Phase:
    stop = asyncio.Event()
    load = asyncio.create_task(realtime_load(api, key, clients, stop))
    # Calls straight to the engine (another gateway, a notebook): the upstream's model name.
    around = (
        asyncio.create_task(realtime_load(bypass_api, "none", bypass, stop, "bypass"))
        if bypass_api and bypass
        else None
    )
    figures = Phase(name)
    if lines:
        await asyncio.sleep(1.0)  # realtime steady before the batch arrives
        figures.batch_s = await timed_chat_batch(api, key, lines, MODEL)
        figures.batch_lines_per_s = lines / figures.batch_s
    else:
        await asyncio.sleep(seconds)
    stop.set()
    took = await load
    if around is not None:
        went = await around
        figures.bypass_p50_ms = pct(went, 0.5)
        figures.bypass_p99_ms = pct(went, 0.99)
        figures.bypass_calls = len(went)
    figures.realtime_p50_ms = pct(took, 0.5)
    figures.realtime_p99_ms = pct(took, 0.99)
    figures.realtime_calls = len(took)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--realtime", type=int, default=None, help="closed-loop realtime clients")
    parser.add_argument("--lines", type=int, default=10_000, help="lines of the batch")
    parser.add_argument("--seconds", type=float, default=20.0, help="realtime-alone phase")
    parser.add_argument("--capacity", type=int, default=32, help="the mock's capacity")
    parser.add_argument("--engine", action="store_true", help="load that bypasses tiergate")
    parser.add_argument("--bypass", type=int, default=8, help="clients bypassing tiergate")
    args = parser.parse_args()
    if args.engine:
        args.realtime = 8 if args.realtime is None else args.realtime
        engine_bench(args)
        return
    args.realtime = 16 if args.realtime is None else args.realtime

    phases = run_phases(
        args,
        "tiergate-yield-",
        {},
        [
            ("realtime alone", {"capacity": args.capacity}, 0),
            ("with a batch, flex yields", {"capacity": args.capacity}, args.lines),
            ("with a batch, feature off", {}, args.lines),
        ],
    )

    alone = phases[0]
    spare = (args.capacity - args.realtime) / (LATENCY_MS / 1000)
    print(
        f"flex yields to realtime (mock: capacity {args.capacity}, {LATENCY_MS:.0f} ms a call;"
        f" {args.realtime} closed-loop realtime clients; {args.lines}-line batch)"
    )
    print(f"  spare capacity: {spare:.0f} calls/s")
    for p in phases:
        line = (
            f"  {p.name:<27} realtime p50 {p.realtime_p50_ms:6.1f} ms"
            f" ({p.realtime_p50_ms / alone.realtime_p50_ms:4.2f}x)"
            f"  p99 {p.realtime_p99_ms:6.1f} ms ({p.realtime_p99_ms / alone.realtime_p99_ms:4.2f}x)"
            f"  [{p.realtime_calls} calls]"
        )
        if p.batch_s:
            line += (
                f"  batch {p.batch_s:5.1f} s, {p.batch_lines_per_s:5.1f} lines/s"
                f" = {p.batch_lines_per_s / spare:4.0%} of spare"
            )
        print(line)


# The engine's priorities for the engine phases (vLLM: lower first; bypassing calls send none: 0).
PRIORITY = {"realtime": 0, "flex": 10, "batch": 20}


def run_phases(
    args: argparse.Namespace,
    prefix: str,
    engine: dict[str, str],
    plans: list[tuple[str, dict[str, object], int]],
    bypass: int = 0,
) -> list[Phase]:
    """One mock (``engine``: its engine mode), then per plan (name, what the deployment
    declares, batch lines) a fresh database and gateway under the same load."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    processes: list[Process] = []
    phases: list[Phase] = []
    with database_server(work / "home") as factory:
        try:
            url, mock = start_mock_upstream(
                work / "mock.log", latency_ms=LATENCY_MS, capacity=args.capacity, **engine
            )
            processes.append(mock)
            for name, deployment, lines in plans:
                config = write_config(
                    work / f"tiergate-{len(phases)}.yaml",
                    [
                        {
                            "name": MODEL,
                            "deployments": [{"name": "gpu", "upstream": f"{url}/v1", **deployment}],
                            "flex_concurrency": 64,
                        }
                    ],
                    {"batch_chunk": 64, "worker_concurrency": 16},
                )
                db = factory.create().libpq()
                key = create_key(db, "bench")
                gateway = start_gateway(
                    database_url=db, config=config, log=work / f"gw-{len(phases)}.log"
                )
                processes.append(gateway.process)
                load = phase(
                    name,
                    gateway.api,
                    key,
                    args.realtime,
                    args.seconds,
                    lines,
                    bypass_api=f"{url}/v1" if bypass else None,
                    bypass=bypass,
                )
                phases.append(asyncio.run(load))
                gateway.process.stop()
        finally:
            for process in processes:
                process.stop()
    return phases


def engine_bench(args: argparse.Namespace) -> None:
    """The ``--engine`` comparison (see the module doc)."""
    engine: dict[str, object] = {"engine": "vllm", "engine_load": {"read_every_s": 0.25}}
    phases = run_phases(
        args,
        "tiergate-engine-",
        {"engine": "vllm", "scheduling_policy": "priority"},
        [
            ("alone", {}, 0),
            ("engine metrics + priority", {**engine, "priority": PRIORITY}, args.lines),
            ("engine metrics alone", engine, args.lines),
            ("declared capacity alone", {"capacity": args.capacity}, args.lines),
            ("nothing", {}, args.lines),
        ],
        bypass=args.bypass,
    )

    alone = phases[0]
    left = (args.capacity - args.realtime - args.bypass) / (LATENCY_MS / 1000)
    print(
        f"deferred work follows the engine (mock vLLM engine: {args.capacity} slots, priority"
        f" scheduling, {LATENCY_MS:.0f} ms a call; {args.bypass} clients bypassing tiergate,"
        f" {args.realtime} realtime clients through it; {args.lines}-line batch)"
    )
    print(f"  capacity they leave: {left:.0f} calls/s")
    for p in phases:
        line = (
            f"  {p.name:<26} bypass p50 {p.bypass_p50_ms:6.1f} ms"
            f" ({p.bypass_p50_ms / alone.bypass_p50_ms:4.2f}x)"
            f" p99 {p.bypass_p99_ms:6.1f} ms ({p.bypass_p99_ms / alone.bypass_p99_ms:4.2f}x)"
            f"  realtime p50 {p.realtime_p50_ms:6.1f} ms"
            f" ({p.realtime_p50_ms / alone.realtime_p50_ms:4.2f}x)"
            f" p99 {p.realtime_p99_ms:6.1f} ms ({p.realtime_p99_ms / alone.realtime_p99_ms:4.2f}x)"
        )
        if p.batch_s:
            line += (
                f"  batch {p.batch_s:5.1f} s, {p.batch_lines_per_s:5.1f} lines/s"
                f" = {p.batch_lines_per_s / left:4.0%} of what is left"
            )
        print(line)


if __name__ == "__main__":
    main()
