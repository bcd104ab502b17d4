"""Realtime stream bench: the gateway's CPU per streamed chat completion.

Real processes on loopback (embedded PostgreSQL, the mock upstream at 0 ms, the gateway
without its worker). ``--concurrency`` clients each run streamed chat completions of a
``--words``-word answer back to back; the figure is the gateway process's CPU time (user +
system) divided by the number of streams, next to the same for non-streamed calls.

``--compare DIR`` also runs a gateway from another checkout (e.g. ``/work/main``) on its
own database and alternates the two in every round, so both see the same machine load.

``--flex N`` instead measures N sequential blocking flex streams (gateway with its
in-process worker): how long after the row is finished the first event reaches the client
(p50 target <= 15 ms, as for non-streamed flex), and the row writes per streamed response.

Usage: python bench/streams.py [--calls N] [--concurrency C] [--words W] [--compare DIR]
       python bench/streams.py --flex N
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
from typing import Any

import httpx
import psycopg

from app.testing.config import write_config
from app.testing.measure import cpu_seconds
from app.testing.postgres import database_server
from app.testing.processes import create_key, start_gateway, start_mock_upstream
from app.testing.stack import bench_stack


async def run_calls(
    api: str, key: str, calls: int, concurrency: int, words: int, stream: bool
) -> int:
    """``calls`` chat completions over ``concurrency`` connections; the events received."""
    headers = {"Authorization": f"Bearer {key}"}
    text = " ".join(f"w{i}" for i in range(words))
    body = {"model": "remote", "messages": [{"role": "user", "content": text}], "stream": stream}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    events = 0
    todo = iter(range(calls))

    async def loop() -> None:
        nonlocal events
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            for _ in todo:
                if not stream:
                    (await client.post(api, json=body, headers=headers)).raise_for_status()
                    continue
                async with client.stream("POST", api, json=body, headers=headers) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        events += line.startswith("data:")

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return events


async def flex_streams(api: str, key: str, db: str, n: int) -> list[float]:
    """Sequential flex chat streams: ms from the row's finished_at to the first event."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": "remote",
        "messages": [{"role": "user", "content": "flex stream bench"}],
        "service_tier": "flex",
        "stream": True,
    }
    added = []
    async with httpx.AsyncClient(timeout=60) as client:
        with psycopg.connect(db, autocommit=True) as conn:
            for _ in range(n):
                first = None
                async with client.stream(
                    "POST", api + "/chat/completions", json=body, headers=headers
                ) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if first is None and line.startswith("data:"):
                            first = time.time()
                rid = response.headers["x-request-id"]
                found = conn.execute(
                    "SELECT finished_at FROM requests WHERE id = %s", (rid,)
                ).fetchone()
                assert found is not None and first is not None
                added.append((first - found[0].timestamp()) * 1000)
    return added


def row_writes(db: str) -> int:
    """Rows inserted and updated in ``requests`` so far (PostgreSQL's statistics)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        found = conn.execute(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'requests'"
        ).fetchone()
    return int(found[0]) if found else 0


def flex_main(n: int) -> None:

    def models(upstream: str) -> list[dict[str, Any]]:
        return [{"name": "remote", "upstream": upstream, "flex_concurrency": 64}]

    with bench_stack(models) as stack:
        api, key, db = stack.gateway.api, stack.key, stack.db
        asyncio.run(flex_streams(api, key, db, 20))  # warm up
        time.sleep(1.5)  # statistics of the warm-up flushed
        before = row_writes(db)
        added = asyncio.run(flex_streams(api, key, db, n))
        time.sleep(1.5)
        writes = (row_writes(db) - before) / n
    added.sort()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    print(f"tiergate flex stream bench ({when}, {os.cpu_count()} cores, mock upstream at 0 ms)")
    print(
        f"blocking flex stream: first event after the row finished  p50"
        f" {added[len(added) // 2]:.1f} ms  p99 {added[int(len(added) * 0.99)]:.1f} ms"
        f"  (n={n}; target p50 <= 15 ms)"
    )
    print(f"row writes per streamed flex response (requests inserts + updates): {writes:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", help="another checkout to run side by side")
    parser.add_argument("--flex", type=int, help="measure N sequential flex streams instead")
    args = parser.parse_args()
    if args.flex:
        flex_main(args.flex)
        return

    here = str(Path(__file__).resolve().parent.parent)
    sides = {"this": here, **({"compare": args.compare} if args.compare else {})}
    work = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    processes = []
    figures: dict[tuple[str, bool], list[float]] = {}
    events = 0
    with database_server(work / "home") as factory:
        try:
            upstream_url, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            config = write_config(
                work / "tiergate.yaml", [{"name": "remote", "upstream": f"{upstream_url}/v1"}]
            )
            gateways = {}
            for side, root in sides.items():
                db = factory.create().libpq()
                key = create_key(db, "bench")
                gw = start_gateway(
                    database_url=db,
                    config=config,
                    log=work / f"gw-{side}.log",
                    worker=False,
                    env={"PYTHONPATH": root},
                    cwd=work,  # so that PYTHONPATH, not the current directory, names the code
                )
                processes.append(gw.process)
                assert gw.process.proc is not None
                gateways[side] = (gw.api + "/chat/completions", key, gw.process.proc.pid)
                asyncio.run(run_calls(gateways[side][0], key, 100, args.concurrency, 5, True))
            for _ in range(args.rounds):  # alternating, as this VM's speed drifts
                for side, (url, key, pid) in gateways.items():
                    for stream in (True, False):
                        before = cpu_seconds(pid)
                        got = asyncio.run(
                            run_calls(url, key, args.calls, args.concurrency, args.words, stream)
                        )
                        used = (cpu_seconds(pid) - before) / args.calls * 1000
                        figures.setdefault((side, stream), []).append(used)
                        events = got or events
        finally:
            for process in processes:
                process.stop()

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    print(f"tiergate stream bench ({when}, {os.cpu_count()} cores, mock upstream at 0 ms)")
    for (side, stream), values in figures.items():
        name = "streamed" if stream else "non-streamed"
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{sides[side]}: gateway CPU per {name:12} chat call  median"
            f" {statistics.median(values):.2f} ms  ({args.rounds} runs of {args.calls} calls,"
            f" concurrency {args.concurrency}: {runs})"
        )
    print(f"events per stream: {events / args.calls:.0f} ({args.words}-word prompts)")


if __name__ == "__main__":
    main()
