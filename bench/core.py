"""Core tier benchmark: prints figures for the README.

Measures, in one run, with the mock upstream at zero latency (all real processes on loopback):
  1. blocking flex added latency: job finished (row's finished_at) -> client has the answer
  2. single flex request end-to-end latency
  3. realtime proxy throughput / direct-to-upstream throughput (same load generator)
  4. database connections the gateway holds while 1,000 blocking flex clients wait
  5. what the response cache adds to a realtime miss (exact, and exact + semantic with the
     mock's embeddings), and what a hit costs, from sequential calls alternating models

Usage: python bench/core.py [--flex N] [--seconds S] [--concurrency C] [--waiters W]
                            [--cache N] [--only cache]
Uses DATABASE_URL if set, else a throw-away embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.testing.config import write_config
from app.testing.measure import flex_latency
from app.testing.postgres import database_server
from app.testing.processes import (
    create_key,
    start_gateway,
    start_mock_upstream,
    start_worker,
)
from app.testing.stack import bench_stack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(url: str, key: str, model: str, seconds: float, concurrency: int) -> float:
    """Requests per second of non-streaming chat completions against ``url``.

    One single-connection client per concurrent loop: one big httpx pool scans all its idle
    connections on every request, which would make the load generator the bottleneck.
    """
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": model, "messages": [{"role": "user", "content": "throughput test"}]}
    done = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(timeout=30, limits=limits) for _ in range(concurrency)]
    try:
        for client in clients:  # warm up connections
            (await client.post(url, json=body, headers=headers)).raise_for_status()
        deadline = time.perf_counter() + seconds

        async def loop(client: httpx.AsyncClient) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await client.post(url, json=body, headers=headers)).raise_for_status()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop(client) for client in clients))
        elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            await client.aclose()
    return done / elapsed


CACHE_MODELS = ("remote", "remote-cached", "remote-semantic")


async def cache_latency(api: str, key: str, n: int) -> dict[str, list[float]]:
    """Milliseconds per realtime call: misses of each model of ``CACHE_MODELS`` (every input
    new), calls alternating so that drift hits all alike; then hits of the exact cache."""
    headers = {"Authorization": f"Bearer {key}"}
    times: dict[str, list[float]] = {m: [] for m in (*CACHE_MODELS, "hit")}
    run = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(timeout=60) as client:

        async def call(model: str, text: str, expect: str | None) -> float:
            body = {"model": model, "input": text}
            start = time.perf_counter()
            response = await client.post(api + "/responses", json=body, headers=headers)
            took = (time.perf_counter() - start) * 1000
            response.raise_for_status()
            assert response.headers.get("x-tiergate-cache") == expect, response.headers
            return took

        for model in CACHE_MODELS:  # warm up connections and code paths
            for i in range(20):
                await call(model, f"warm {run} {model} {i}", None if model == "remote" else "miss")
        for i in range(n):
            order = CACHE_MODELS[i % 3 :] + CACHE_MODELS[: i % 3]
            for model in order:
                expect = None if model == "remote" else "miss"
                times[model].append(await call(model, f"bench {run} {model} {i}", expect))
        text = f"bench {run} remote-cached 0"
        for _ in range(n):
            times["hit"].append(await call("remote-cached", text, "hit"))
    return times


def gateway_connections(db: str) -> tuple[int, int]:
    """(open, non-idle) connections of gateway processes, LISTEN connection included."""
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name IN ('tiergate', 'tiergate-listen') AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows), sum(1 for (state,) in rows if state != "idle")


async def many_waiters(api: str, key: str, db: str, waiters: int, start_worker_fn) -> dict:
    """``waiters`` blocking flex clients wait (no worker yet); count connections; then finish."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "remote", "input": "many", "service_tier": "flex"}
    limits = httpx.Limits(max_connections=waiters, max_keepalive_connections=waiters)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        tasks = [
            asyncio.create_task(client.post(api + "/responses", json=body, headers=headers))
            for _ in range(waiters)
        ]
        with psycopg.connect(db, autocommit=True) as conn:
            while True:
                (pending,) = conn.execute(
                    "SELECT count(*) FROM requests WHERE status = 'pending'"
                ).fetchone()
                if pending >= waiters:
                    break
                await asyncio.sleep(0.2)
        await asyncio.sleep(6)  # let the burst's connections settle; one re-check passes
        samples = []
        for _ in range(10):
            samples.append(gateway_connections(db))
            await asyncio.sleep(0.5)
        worker = start_worker_fn()
        started = time.perf_counter()
        results = await asyncio.gather(*tasks)
        drained = time.perf_counter() - started
        worker.stop()
    ok = sum(1 for r in results if r.status_code == 200)
    return {
        "open": max(s[0] for s in samples),
        "busy": max(s[1] for s in samples),
        "ok": ok,
        "drain_s": drained,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flex", type=int, default=200, help="sequential flex calls")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6, help="alternating throughput runs")
    parser.add_argument("--cache", type=int, default=500, help="sequential calls per cache case")
    parser.add_argument("--only", choices=["cache"], help="run only this part")
    args = parser.parse_args()
    if args.only == "cache":
        cache_bench(args.cache)
        return

    work = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    processes = []
    with database_server(work / "home") as factory:
        try:
            upstream_url, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            config = write_config(
                work / "tiergate.yaml",
                [{"name": "remote", "upstream": f"{upstream_url}/v1", "flex_concurrency": 64}],
                {"worker_concurrency": 64},
            )
            db = factory.create().libpq()
            key = create_key(db, "bench")

            gw = start_gateway(database_url=db, config=config, log=work / "gw.log")
            processes.append(gw.process)
            added, total = asyncio.run(flex_latency(gw.api, key, db, args.flex, "remote"))
            # Alternate the two sides (this VM's CPU speed drifts): mean of `rounds` runs each.
            rts, directs = [], []
            for _ in range(args.rounds):
                rts.append(
                    asyncio.run(
                        throughput(
                            gw.api + "/chat/completions",
                            key,
                            "remote",
                            args.seconds,
                            args.concurrency,
                        )
                    )
                )
                directs.append(
                    asyncio.run(
                        throughput(
                            upstream_url + "/v1/chat/completions",
                            key,
                            "remote",
                            args.seconds,
                            args.concurrency,
                        )
                    )
                )
            rt, direct = statistics.mean(rts), statistics.mean(directs)
            # CPU speed drifts between runs here: the median of paired ratios is steadier.
            ratio = statistics.median(a / b for a, b in zip(rts, directs, strict=True))
            gw.process.stop()

            db2 = factory.create().libpq()
            key2 = create_key(db2, "bench")
            gw2 = start_gateway(database_url=db2, config=config, log=work / "gw2.log", worker=False)
            processes.append(gw2.process)
            waiting = asyncio.run(
                many_waiters(
                    gw2.api,
                    key2,
                    db2,
                    args.waiters,
                    lambda: start_worker(
                        database_url=db2, config=config, log=work / "w.log", concurrency=64
                    ),
                )
            )
        finally:
            for process in processes:
                process.stop()

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    print(f"tiergate core bench ({when}, {os.cpu_count()} cores, mock upstream at 0 ms)")
    print(
        f"blocking flex added wait  p50 {pct(added, 0.5):6.1f} ms   p99 {pct(added, 0.99):6.1f} ms"
        f"   (n={len(added)}; target p50 <= 15 ms)"
    )
    print(
        f"single flex end-to-end    p50 {pct(total, 0.5):6.1f} ms   p99 {pct(total, 0.99):6.1f} ms"
        f"   mean {statistics.mean(total):.1f} ms"
    )
    print(
        f"realtime proxy            {rt:7.0f} req/s  vs direct {direct:7.0f} req/s"
        f"   ratio {ratio:.2f} (target >= 0.6; concurrency {args.concurrency}; median of"
        f" {args.rounds} alternating pairs of {args.seconds:.0f} s: "
        f"{', '.join(f'{a / b:.2f}' for a, b in zip(rts, directs, strict=True))})"
    )
    print(
        f"{args.waiters} blocking flex waiters: gateway holds {waiting['open']} connections "
        f"({waiting['busy']} busy) while they wait (target <= 5); "
        f"{waiting['ok']}/{args.waiters} answered, drained in {waiting['drain_s']:.1f} s"
    )


def cache_bench(n: int) -> None:
    """Part 5 alone: the response cache's cost on a realtime miss, and a hit's latency."""
    semantic = {"embedding_model": "embed", "min_similarity": 0.92, "dimensions": 256}

    def models(upstream: str) -> list[dict[str, Any]]:
        return [
            {"name": "remote", "upstream": upstream},
            {"name": "remote-cached", "upstream": upstream, "cache": {"exact": True}},
            {
                "name": "remote-semantic",
                "upstream": upstream,
                "cache": {"exact": True, "semantic": semantic},
            },
            {"name": "embed", "upstream": upstream, "endpoints": ["embeddings"]},
        ]

    with bench_stack(models) as stack:
        times = asyncio.run(cache_latency(stack.gateway.api, stack.key, n))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    print(f"tiergate cache bench ({when}, {os.cpu_count()} cores, mock upstream at 0 ms, n={n})")
    base = pct(times["remote"], 0.5)
    for name, label in (
        ("remote", "no cache (miss baseline)"),
        ("remote-cached", "exact cache, miss"),
        ("remote-semantic", "exact + semantic, miss"),
        ("hit", "exact cache, hit"),
    ):
        p50, p99 = pct(times[name], 0.5), pct(times[name], 0.99)
        added = "" if name == "remote" else f"   p50 {p50 - base:+5.2f} ms vs no cache"
        print(f"{label:<26} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms{added}")
    print("target: an exact-cache miss adds at most 2 ms p50")


if __name__ == "__main__":
    main()
