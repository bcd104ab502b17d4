"""Fair shares of the flex tier: one key's big batch against other keys' work.

Real processes on loopback: the mock provider at ``--latency-ms`` (default 100) a call, a
gateway with its in-process worker, one model with ``flex_concurrency`` 32. Three phases:

1. key A's ``--lines`` batch (default 20,000) runs; meanwhile blocking flex calls are made one
   after another, alternately with key B's key and with key A's own (the baseline: within one
   key calls are served in arrival order, as every key's were before fair shares);
   p50, p99 and max of each until the batch ends;
2. keys C and D submit ``--pair-lines`` batches (default 5,000) at once: their line rates while
   both run, and the ratio (target within +-20 %);
3. the same with C at ``--weight 3``: the ratio should be about 3.

Usage: python bench/fairness.py [--lines N] [--pair-lines N] [--latency-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from app.testing.batches import chat_lines, create_batch, upload
from app.testing.config import write_config
from app.testing.postgres import database_server
from app.testing.processes import Process, create_key, start_gateway, start_mock_upstream

MODEL = "shared"
SLOTS = 32


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def start_batch(api: str, key: str, lines: int, tag: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api, timeout=120, headers=headers) as http:
        file_id = await upload(http, chat_lines(lines, MODEL, tag))
        return str((await create_batch(http, file_id))["id"])


def completed(db: psycopg.Connection, batch_id: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM requests WHERE batch_id = %s AND status = 'completed'", (batch_id,)
    ).fetchone()
    return int(row[0]) if row else 0


async def flex_call(http: httpx.AsyncClient, key: str) -> float:
    started = time.perf_counter()
    answer = await http.post(
        "/responses",
        json={"model": MODEL, "input": "probe", "service_tier": "flex"},
        headers={"Authorization": f"Bearer {key}"},
    )
    answer.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def until(predicate: Callable[[], bool], poll_s: float = 0.2) -> None:
    """Poll ``predicate`` (a count in the database: no event announces it)."""
    while True:
        if predicate():
            return
        await asyncio.sleep(poll_s)


@dataclass
class Probe:
    other_key_ms: list[float]
    same_key_ms: list[float]
    batch_s: float


async def phase_one(api: str, db: psycopg.Connection, a: str, b: str, lines: int) -> Probe:
    """A's batch runs; alternate blocking flex calls from B and from A until it ends."""
    batch = await start_batch(api, a, lines, "a")
    await until(lambda: completed(db, batch) >= SLOTS)
    started = time.perf_counter()
    other: list[float] = []
    same: list[float] = []
    async with httpx.AsyncClient(base_url=api, timeout=600) as http:
        while completed(db, batch) < lines * 0.95:
            other.append(await flex_call(http, b))
            same.append(await flex_call(http, a))
    await until(lambda: completed(db, batch) >= lines)
    return Probe(other, same, time.perf_counter() - started)


async def pair(api: str, db: psycopg.Connection, first: str, second: str, lines: int) -> float:
    """Lines the second batch finished per line of the first, while both ran."""
    one = await start_batch(api, first, lines, "p1")
    two = await start_batch(api, second, lines, "p2")
    await until(lambda: completed(db, one) >= SLOTS and completed(db, two) >= SLOTS, 0.1)
    one_from, two_from = completed(db, one), completed(db, two)
    await until(lambda: max(completed(db, one), completed(db, two)) >= lines * 0.9)
    ratio = (completed(db, two) - two_from) / max(1, completed(db, one) - one_from)
    await until(lambda: min(completed(db, one), completed(db, two)) >= lines)
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=20_000, help="key A's batch")
    parser.add_argument("--pair-lines", type=int, default=5_000, help="each batch of a pair")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the mock's latency")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiergate-fair-"))
    processes: list[Process] = []
    with database_server(work / "home") as factory:
        try:
            url, mock = start_mock_upstream(work / "mock.log", latency_ms=args.latency_ms)
            processes.append(mock)
            config = write_config(
                work / "tiergate.yaml",
                [{"name": MODEL, "upstream": f"{url}/v1", "flex_concurrency": SLOTS}],
                {"max_batch_lines": max(args.lines, args.pair_lines), "heartbeat_s": 1},
            )
            db_url = factory.create().libpq()
            keys = {name: create_key(db_url, name) for name in ("a", "b", "c", "d")}
            heavy = create_key(db_url, "heavy", options=["--weight", "3"])
            gateway = start_gateway(database_url=db_url, config=config, log=work / "gw.log")
            processes.append(gateway.process)
            with psycopg.connect(db_url, autocommit=True) as db:
                probe = asyncio.run(phase_one(gateway.api, db, keys["a"], keys["b"], args.lines))
                even = asyncio.run(pair(gateway.api, db, keys["c"], keys["d"], args.pair_lines))
                tilted = asyncio.run(pair(gateway.api, db, keys["d"], heavy, args.pair_lines))
        finally:
            for process in processes:
                process.stop()
    print(
        f"fair shares (mock {args.latency_ms:.0f} ms a call, {SLOTS} slots; 2 cores,"
        f" {time.strftime('%Y-%m-%d')})"
    )
    print(
        f"  key A's {args.lines}-line batch ran {probe.batch_s:.0f} s; blocking flex calls"
        " meanwhile, one at a time:"
    )
    for name, values in (("key B", probe.other_key_ms), ("key A itself", probe.same_key_ms)):
        print(
            f"    {name:<13} p50 {pct(values, 0.5):7.0f} ms  p99 {pct(values, 0.99):7.0f} ms"
            f"  max {max(values):7.0f} ms  ({len(values)} calls)"
        )
    print(
        f"  two keys' {args.pair_lines}-line batches at once: lines of D per line of C"
        f" {even:.2f} (target 0.80-1.25)"
    )
    print(
        f"  weight 3 against weight 1: lines of the weighted key per line of the other {tilted:.2f}"
    )


if __name__ == "__main__":
    main()
