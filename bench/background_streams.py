"""Stream storage bench: database writes per streamed background Response, and the first
byte of a blocking flex stream after its job finished.

Real processes on loopback (embedded PostgreSQL, the mock upstream, the gateway with its
in-process worker). Part 1 runs ``--calls`` background Responses with ``stream=true`` (a
``--words``-word answer; once at full speed, once trickled by the mock in 8 parts
``--trickle-ms`` apart) and counts, per response, the events a client received and the
statements that stored events: the accepting INSERT (which stores the first two) plus one
``NOTIFY tiergate_events`` per flush (each flush, the last one with the final status
included, sends exactly one). Part 2 runs ``--calls`` blocking flex streams one after the
other and measures, for each, the time from the row's ``finished_at`` (set by the worker's
final statement) to the first event the client reads.

Usage: python bench/background_streams.py [--calls N] [--words W] [--trickle-ms T]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import time
from collections import Counter
from typing import Any

import httpx
import psycopg

from app.testing.stack import bench_stack
from app.vocabulary import Channel


async def background_streams(
    api: str, key: str, db: str, calls: int, words: int, trickle_ms: int
) -> tuple[float, float]:
    """Events per response and statements storing events per response (medians)."""
    headers = {"Authorization": f"Bearer {key}"}
    prefix = f"mock:trickle_ms={trickle_ms} " if trickle_ms else ""
    text = prefix + " ".join(f"w{i}" for i in range(words))
    body = {"model": "remote", "input": text, "background": True, "stream": True}
    flushes: Counter[str] = Counter()
    received: dict[str, int] = {}
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await conn.execute(f"LISTEN {Channel.EVENTS}")

        async def listen() -> None:
            async for note in conn.notifies():
                flushes[note.payload] += 1

        listener = asyncio.create_task(listen())
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(calls):
                async with client.stream("POST", api, json=body, headers=headers) as response:
                    response.raise_for_status()
                    rid = response.headers["x-request-id"]
                    received[rid] = 0
                    async for line in response.aiter_lines():
                        received[rid] += line.startswith("data:")
        await asyncio.sleep(0.5)  # the last notifications
        listener.cancel()
    events = statistics.median(received.values())
    writes = statistics.median(1 + flushes[rid] for rid in received)
    return events, writes


async def flex_first_byte(api: str, key: str, db: str, calls: int) -> list[float]:
    """Milliseconds from each blocking flex stream's ``finished_at`` to its first event."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "remote", "input": "first byte", "service_tier": "flex", "stream": True}
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(calls):
            async with client.stream("POST", api, json=body, headers=headers) as response:
                response.raise_for_status()
                rid = response.headers["x-request-id"]
                async for line in response.aiter_lines():
                    if line.startswith("data:") and rid not in seen:
                        seen[rid] = time.time()
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, extract(epoch FROM finished_at) FROM requests WHERE id = ANY(%s)",
            (list(seen),),
        )
        finished = {rid: float(at) for rid, at in await cur.fetchall()}
    return [(seen[rid] - finished[rid]) * 1000 for rid in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--trickle-ms", type=int, default=100)
    args = parser.parse_args()

    def models(upstream: str) -> list[dict[str, Any]]:
        return [{"name": "remote", "upstream": upstream}]

    with bench_stack(models) as stack:
        url, key, db = stack.gateway.api + "/responses", stack.key, stack.db
        asyncio.run(flex_first_byte(url, key, db, 20))  # warm up
        fast = asyncio.run(background_streams(url, key, db, args.calls, args.words, 0))
        slow_calls = max(1, args.calls // 10)
        slow = asyncio.run(
            background_streams(url, key, db, slow_calls, args.words, args.trickle_ms)
        )
        first = asyncio.run(flex_first_byte(url, key, db, args.calls))

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    print(f"tiergate stream storage bench ({when}, {os.cpu_count()} cores)")
    for name, calls, (events, writes) in (
        ("upstream at full speed", args.calls, fast),
        (f"upstream in 8 parts {args.trickle_ms} ms apart", slow_calls, slow),
    ):
        print(
            f"background stream, {name}: {events:.0f} events, {writes:.0f} statements storing"
            f" events per response (median of {calls})"
        )
    first.sort()
    p50, p90 = statistics.median(first), first[int(len(first) * 0.9)]
    print(
        f"blocking flex stream: first event {p50:.1f} ms p50, {p90:.1f} ms p90 after the"
        f" job's final statement ({len(first)} calls, one at a time)"
    )


if __name__ == "__main__":
    main()
