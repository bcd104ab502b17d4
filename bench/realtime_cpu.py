"""The gateway's CPU per realtime call: what the hot path costs, whatever the machine's load.

Starts the mock upstream and ``tiergate serve`` (no worker), sends ``--calls`` non-streaming
chat completions at ``--concurrency``, and divides the gateway process's CPU time (user +
system, from /proc) by the calls. Run it from a checkout to measure that checkout's code
(``cd /path/to/other/checkout && PYTHONPATH=. python /path/to/realtime_cpu.py``).

Usage: python bench/realtime_cpu.py [--calls N] [--concurrency C] [--rounds R] [--priced]
       [--key-options "--rpm 1000000 --tpm 100000000 --budget-usd 1000000"]

``--key-options`` creates the bench key with rate limits and/or a budget (high enough that
nothing is refused), to measure what enforcing them costs per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

import httpx

from app.testing.config import write_config
from app.testing.postgres import database_server
from app.testing.processes import create_key, start_gateway, start_mock_upstream

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def calls(url: str, key: str, n: int, concurrency: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "remote", "messages": [{"role": "user", "content": "cpu per call"}]}
    left = n
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def loop() -> None:
        nonlocal left
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            while left > 0:
                left -= 1
                (await client.post(url, json=body, headers=headers)).raise_for_status()

    await asyncio.gather(*(loop() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--priced", action="store_true", help="give the model a price")
    parser.add_argument(
        "--key-options", default="", help="options of keys create: --rpm, --tpm, --budget-usd"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiergate-cpu-"))
    model: dict[str, object] = {"name": "remote", "upstream": ""}
    with database_server(work / "home") as factory:
        upstream, mock = start_mock_upstream(work / "mock.log")
        try:
            model["upstream"] = f"{upstream}/v1"
            if args.priced:
                model["pricing"] = {"input_per_mtok": 3, "output_per_mtok": 15}
            config = write_config(work / "tiergate.yaml", [model])
            db = factory.create().libpq()
            key = create_key(db, "bench", options=args.key_options.split())
            gw = start_gateway(database_url=db, config=config, log=work / "gw.log", worker=False)
            try:
                assert gw.process.proc is not None
                pid = gw.process.proc.pid
                url = gw.api + "/chat/completions"
                asyncio.run(calls(url, key, 300, args.concurrency))  # warm up
                per_call = []
                for _ in range(args.rounds):
                    before = cpu_s(pid)
                    asyncio.run(calls(url, key, args.calls, args.concurrency))
                    per_call.append((cpu_s(pid) - before) / args.calls * 1e6)
            finally:
                gw.process.stop()
        finally:
            mock.stop()
    rounds = ", ".join(f"{v:.0f}" for v in per_call)
    print(
        f"gateway CPU per realtime call: median {statistics.median(per_call):.0f} us"
        f" ({args.rounds} rounds of {args.calls} calls at concurrency {args.concurrency}: {rounds})"
        + (f" key: {args.key_options}" if args.key_options else "")
    )


if __name__ == "__main__":
    main()
