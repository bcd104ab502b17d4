"""Webhooks: delivery lag with a healthy receiver, and the queue with a receiver that hangs.

Real processes on loopback (embedded PostgreSQL, the mock provider at 0 ms, ``tiergate
serve`` with its in-process worker, which also delivers webhooks); the receivers run in this
process, on a thread of their own.

1. **Delivery lag**: one endpoint (``tiergate webhooks create``) whose receiver answers 200
   at once; ``--responses`` background ``/v1/responses`` calls (default 10,000) submitted by
   ``--clients`` closed-loop clients; the lag of each event is the time from its outbox row
   (``webhook_deliveries.created_at``: the transaction that made the response final) to the
   receiver having it; p50, p99, max, and the rates.
2. **The queue with a hanging receiver**: phases on fresh databases and gateways, alternating
   ``--rounds`` times: no webhooks at all, then one endpoint whose receiver reads each request
   and never answers (every attempt runs into ``webhooks.timeout_s``, ``--timeout-s``, default
   10 as in production). In both, background responses arrive at ``--feed`` per second for
   the whole phase (each one an event for the hanging endpoint: its deliveries pile up, its
   ``per_endpoint`` slots stay full). Measured meanwhile, as bench/core.py does:
   ``--flex`` sequential blocking flex calls (round trip p50, and the wait added after the
   row finished), then a ``--lines`` batch (lines per second from ``in_progress`` to
   ``completed``). Target: with the hanging receiver, flex p50 and batch rate within 10 % of
   no webhooks.

Usage: python bench/webhooks.py [--responses N] [--clients C] [--flex N] [--lines N]
                                [--feed R] [--rounds R] [--timeout-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.testing.batches import timed_chat_batch
from app.testing.config import write_config
from app.testing.measure import flex_latency
from app.testing.postgres import DatabaseFactory, database_server
from app.testing.processes import (
    Gateway,
    Process,
    base_env,
    create_key,
    start_gateway,
    start_mock_upstream,
)

MODEL = "remote"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Receiver:
    """A minimal HTTP/1.1 receiver (keep-alive) on its own thread and event loop: answers 200
    at once and notes when each ``webhook-id`` first arrived, or (``hang``) reads the request
    and never answers."""

    hang: bool = False
    arrivals: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    url: str = ""

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                got = time.time()
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                if self.hang:
                    await reader.read()  # until the sender gives up and closes
                    return
                self.arrivals.setdefault(headers.get("webhook-id", ""), got)
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def make_endpoint(db: str, config: Path, url: str) -> None:
    """``tiergate webhooks create`` for the key ``bench``, as an admin runs it."""
    subprocess.run(
        [sys.executable, "-m", "app.cli", "webhooks", "create", "--url", url, "--key", "bench"],
        env=base_env(DATABASE_URL=db, TIERGATE_CONFIG=str(config)),
        capture_output=True,
        check=True,
        timeout=60,
    )


def stack(
    factory: DatabaseFactory, work: Path, upstream: str, name: str, timeout_s: float
) -> tuple[str, str, Path, Gateway]:
    """A fresh database, key ``bench`` and gateway (in-process worker): (db, key, config, gw)."""
    config = write_config(
        work / f"{name}.yaml",
        [{"name": MODEL, "upstream": f"{upstream}/v1", "flex_concurrency": 64}],
        {"worker_concurrency": 16, "batch_chunk": 64},
        webhooks={"allow_private": True, "timeout_s": timeout_s},
    )
    db = factory.create().libpq()
    key = create_key(db, "bench")
    gateway = start_gateway(database_url=db, config=config, log=work / f"{name}.log")
    return db, key, config, gateway


async def background(api: str, key: str, n: int, clients: int) -> float:
    """``n`` background responses from ``clients`` closed loops; seconds to submit them."""
    headers = {"Authorization": f"Bearer {key}"}
    left = iter(range(n))
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def loop() -> None:
        async with httpx.AsyncClient(base_url=api, timeout=60, limits=limits) as http:
            for i in left:
                body = {"model": MODEL, "input": f"hook {i}", "background": True}
                (await http.post("/responses", json=body, headers=headers)).raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return time.perf_counter() - started


async def feed(api: str, key: str, rate: float, stop: asyncio.Event) -> int:
    """Background responses at ``rate`` per second (open loop) until ``stop``; how many."""
    headers = {"Authorization": f"Bearer {key}"}
    sent = 0
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        tasks: set[asyncio.Task[httpx.Response]] = set()
        started = time.perf_counter()
        while not stop.is_set():
            body = {"model": MODEL, "input": f"feed {sent}", "background": True}
            task = asyncio.create_task(http.post("/responses", json=body, headers=headers))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
        for response in await asyncio.gather(*tasks):
            response.raise_for_status()
    return sent


@dataclass
class Queue:
    """One queue phase's figures."""

    name: str
    flex_p50_ms: float
    added_p50_ms: float
    lines_per_s: float
    fed: int
    pending: int  # deliveries not delivered at the phase's end
    attempts: int  # attempts the hanging receiver saw


async def queue_phase(
    name: str, api: str, key: str, db: str, args: argparse.Namespace, hanging: Receiver | None
) -> Queue:
    stop = asyncio.Event()
    feeding = asyncio.create_task(feed(api, key, args.feed, stop))
    seen = hanging.requests if hanging else 0
    await asyncio.sleep(args.warmup)  # the endpoint's slots full, deliveries piling up
    added, total = await flex_latency(api, key, db, args.flex, MODEL)
    rate = args.lines / await timed_chat_batch(api, key, args.lines, MODEL, poll_s=0.1)
    stop.set()
    fed = await feeding
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
        (pending,) = row.fetchone() or (0,)
    return Queue(
        name,
        pct(total, 0.5),
        pct(added, 0.5),
        rate,
        fed,
        pending,
        (hanging.requests - seen) if hanging else 0,
    )


async def lag_phase(
    api: str, key: str, db: str, receiver: Receiver, n: int, clients: int
) -> dict[str, Any]:
    started = time.perf_counter()
    submit_s = await background(api, key, n, clients)
    deadline = time.monotonic() + 600
    while len(receiver.arrivals) < n:
        assert time.monotonic() < deadline, f"{len(receiver.arrivals)} of {n} events arrived"
        await asyncio.sleep(0.2)
    all_s = time.perf_counter() - started
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT event_id, extract(epoch FROM created_at)::float8, attempts,"
            " extract(epoch FROM last_attempt_at - created_at)::float8 * 1000,"
            " extract(epoch FROM delivered_at - created_at)::float8 * 1000"
            " FROM webhook_deliveries"
        ).fetchall()
    assert len(rows) == n, len(rows)
    lags = [(receiver.arrivals[event] - created) * 1000 for event, created, *_ in rows]
    claimed = [row[3] for row in rows]
    stored = [row[4] for row in rows]
    return {
        "n": n,
        "submit_s": submit_s,
        "all_s": all_s,
        "p50": pct(lags, 0.5),
        "p99": pct(lags, 0.99),
        "max": max(lags),
        "claimed_p50": pct(claimed, 0.5),
        "claimed_p99": pct(claimed, 0.99),
        "stored_p50": pct(stored, 0.5),
        "stored_p99": pct(stored, 0.99),
        "retried": sum(1 for row in rows if row[2] > 1),
        "duplicates": receiver.requests - n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--responses", type=int, default=10_000, help="background responses")
    parser.add_argument("--clients", type=int, default=16, help="closed loops submitting them")
    parser.add_argument("--flex", type=int, default=200, help="sequential flex calls a phase")
    parser.add_argument("--lines", type=int, default=5_000, help="lines of a phase's batch")
    parser.add_argument("--feed", type=float, default=20.0, help="background responses/s")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="alternating queue phase pairs")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="webhooks.timeout_s")
    parser.add_argument("--skip-lag", action="store_true", help="only the queue phases")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tiergate-webhooks-"))
    processes: list[Process] = []
    healthy, hanging = Receiver().start(), Receiver(hang=True).start()
    lag: dict[str, Any] | None = None
    queues: list[Queue] = []
    with database_server(work / "home") as factory:
        try:
            upstream, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            if not args.skip_lag:
                db, key, config, gw = stack(factory, work, upstream, "lag", args.timeout_s)
                processes.append(gw.process)
                make_endpoint(db, config, healthy.url)
                lag = asyncio.run(lag_phase(gw.api, key, db, healthy, args.responses, args.clients))
                gw.process.stop()
            for r in range(args.rounds):
                for name in ("no webhooks", "hanging receiver"):
                    db, key, config, gw = stack(
                        factory, work, upstream, f"q{r}-{name[:2]}", args.timeout_s
                    )
                    processes.append(gw.process)
                    receiver = hanging if name == "hanging receiver" else None
                    if receiver:
                        make_endpoint(db, config, receiver.url)
                    queues.append(asyncio.run(queue_phase(name, gw.api, key, db, args, receiver)))
                    gw.process.stop()
        finally:
            for process in processes:
                process.stop()

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    print(
        f"tiergate webhooks bench ({when}, {os.cpu_count()} cores, mock upstream at 0 ms,"
        f" one gateway with its in-process worker)"
    )
    if lag:
        print(
            f"healthy receiver: {lag['n']} background responses from {args.clients} clients,"
            f" submitted in {lag['submit_s']:.1f} s ({lag['n'] / lag['submit_s']:.0f}/s),"
            f" every event received {lag['all_s']:.1f} s after the first submission"
        )
        print(
            f"  delivery lag (outbox row -> receiver)  p50 {lag['p50']:7.1f} ms"
            f"   p99 {lag['p99']:7.1f} ms   max {lag['max']:7.1f} ms"
            f"   (retried {lag['retried']}, duplicates {lag['duplicates']})"
        )
        print(
            f"  of which: claimed by the worker        p50 {lag['claimed_p50']:7.1f} ms"
            f"   p99 {lag['claimed_p99']:7.1f} ms;  stored as delivered"
            f"  p50 {lag['stored_p50']:7.1f} ms   p99 {lag['stored_p99']:7.1f} ms"
        )
    print(
        f"queue with a receiver that never answers (timeout_s {args.timeout_s:g}): background"
        f" responses at {args.feed:g}/s throughout; {args.flex} sequential blocking flex calls,"
        f" then a {args.lines}-line batch; {args.rounds} alternating rounds"
    )
    for q in queues:
        extra = (
            f"   deliveries pending {q.pending}, attempts seen {q.attempts}"
            if q.name == "hanging receiver"
            else ""
        )
        print(
            f"  {q.name:<17} flex round trip p50 {q.flex_p50_ms:6.2f} ms"
            f" (added {q.added_p50_ms:5.2f} ms)   batch {q.lines_per_s:6.0f} lines/s"
            f"   fed {q.fed}{extra}"
        )
    base = [q for q in queues if q.name == "no webhooks"]
    hung = [q for q in queues if q.name == "hanging receiver"]
    if base and hung:
        flex = [h.flex_p50_ms / b.flex_p50_ms for b, h in zip(base, hung, strict=True)]
        rate = [h.lines_per_s / b.lines_per_s for b, h in zip(base, hung, strict=True)]
        print(
            f"  ratio hanging / none (median of pairs): flex p50 {statistics.median(flex):.2f}"
            f" ({', '.join(f'{x:.2f}' for x in flex)}),"
            f" batch lines/s {statistics.median(rate):.2f}"
            f" ({', '.join(f'{x:.2f}' for x in rate)})"
            "   target: flex <= 1.10, batch >= 0.90"
        )


if __name__ == "__main__":
    main()
