"""Realtime stream bench: the gateway's CPU per streamed chat completion.

Real processes on loopback (embedded PostgreSQL, the mock upstream at 0 ms, the gateway
without its worker). ``--concurrency`` clients each run streamed chat completions of a
``--words``-word answer back to back; the figure is the gateway process's CPU time (user +
system) divided by the number of streams, next to the same for non-streamed calls.

``--compare DIR`` also runs a gateway from another checkout (e.g. ``/work/main``) on its
own database and alternates the two in every round, so both see the same machine load.

Usage: python bench/streams.py [--calls N] [--concurrency C] [--words W] [--compare DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
from pathlib import Path

import httpx

from app.testing.config import write_config
from app.testing.measure import cpu_seconds
from app.testing.postgres import database_server
from app.testing.processes import create_key, start_gateway, start_mock_upstream


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", help="another checkout to run side by side")
    args = parser.parse_args()

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
