"""How far N gateways on one database can go over a key's rate limit.

Starts the mock upstream and ``--gateways`` gateways (no worker), creates a key with
``--rpm R``, and hammers it for ``--seconds T`` from ``--concurrency`` clients spread over the
gateways. A token bucket with one minute's capacity admits at most ``R + R x T / 60`` calls
in T seconds; the bench prints what was admitted against that bound, and the 429s.

Usage: python bench/limits.py [--gateways 2] [--rpm 600] [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from app.testing.config import write_config
from app.testing.postgres import database_server
from app.testing.processes import Gateway, create_key, start_gateway, start_mock_upstream


async def hammer(
    gateways: list[Gateway], key: str, seconds: float, concurrency: int
) -> dict[int, int]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "remote", "messages": [{"role": "user", "content": "limit"}]}
    counts: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def loop(n: int) -> None:
        url = gateways[n % len(gateways)].api + "/chat/completions"
        async with httpx.AsyncClient(timeout=30) as client:
            while time.monotonic() < deadline:
                status = (await client.post(url, json=body, headers=headers)).status_code
                counts[status] = counts.get(status, 0) + 1

    await asyncio.gather(*(loop(n) for n in range(concurrency)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiergate-limits-"))
    with database_server(work / "home") as factory:
        upstream, mock = start_mock_upstream(work / "mock.log")
        gateways: list[Gateway] = []
        try:
            config = write_config(
                work / "tiergate.yaml", [{"name": "remote", "upstream": f"{upstream}/v1"}]
            )
            db = factory.create().libpq()
            key = create_key(db, "bench", options=["--rpm", str(args.rpm)])
            for n in range(args.gateways):
                gateways.append(
                    start_gateway(
                        database_url=db, config=config, log=work / f"gw{n}.log", worker=False
                    )
                )
            started = time.monotonic()
            counts = asyncio.run(hammer(gateways, key, args.seconds, args.concurrency))
            elapsed = time.monotonic() - started
        finally:
            for gw in gateways:
                gw.process.stop()
            mock.stop()
    admitted = counts.get(200, 0)
    other = sum(v for k, v in counts.items() if k not in (200, 429))
    bound = args.rpm + args.rpm * elapsed / 60
    print(
        f"{args.gateways} gateways, rpm {args.rpm}, {elapsed:.1f}s: admitted {admitted}"
        f" (bucket bound {bound:.0f}: {100 * (admitted - bound) / bound:+.1f}%),"
        f" refused {counts.get(429, 0)}, other {other}"
    )


if __name__ == "__main__":
    main()
