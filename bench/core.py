"""Core tier benchmark: prints figures for the README.

Measures, in one run, with the mock upstream at zero latency (all real processes on loopback):
  1. blocking flex added latency: job finished (row's finished_at) -> client has the answer
  2. single flex request end-to-end latency
  3. realtime proxy throughput / direct-to-upstream throughput (same load generator)
  4. database connections the gateway holds while 1,000 blocking flex clients wait

Usage: python bench/core.py [--flex N] [--seconds S] [--concurrency C] [--waiters W]
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
from pathlib import Path

import httpx
import psycopg

from app.testing.config import write_config
from app.testing.postgres import database_server
from app.testing.processes import (
    create_key,
    start_gateway,
    start_mock_upstream,
    start_worker,
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def flex_latency(api: str, key: str, db: str, n: int) -> tuple[list[float], list[float]]:
    """Sequential blocking flex calls: (added wait ms, end-to-end ms)."""
    added, total = [], []
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "remote", "input": "bench", "service_tier": "flex"}
    async with httpx.AsyncClient(timeout=60) as client:
        with psycopg.connect(db, autocommit=True) as conn:
            for _ in range(n):
                start = time.time()
                response = await client.post(api + "/responses", json=body, headers=headers)
                got = time.time()
                response.raise_for_status()
                rid = response.headers["x-request-id"]
                (finished,) = conn.execute(
                    "SELECT finished_at FROM requests WHERE id = %s", (rid,)
                ).fetchone()
                added.append((got - finished.timestamp()) * 1000)
                total.append((got - start) * 1000)
    return added, total


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
    args = parser.parse_args()

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
            added, total = asyncio.run(flex_latency(gw.api, key, db, args.flex))
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


if __name__ == "__main__":
    main()
