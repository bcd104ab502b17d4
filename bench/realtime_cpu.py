"""The gateway's CPU per realtime call: what the hot path costs, whatever the machine's load.

Starts the mock upstream and ``tiergate serve`` (no worker), sends ``--calls`` non-streaming
chat completions at ``--concurrency``, and divides the gateway process's CPU time (user +
system, from /proc) by the calls. It does the same for the mock upstream (its own process,
which answers the same calls: the ratio gateway / mock is a yardstick that does not depend
on the machine's speed) and for PostgreSQL when the server runs on this machine (postmaster
and backends, exited backends included).

``--compare DIR`` also runs a gateway from another checkout (e.g. ``/work/main``) on its own
database (same server, same mock) and alternates the two in every round, so both see the
same machine load. Without it the code measured is this checkout's.

Usage: python bench/realtime_cpu.py [--calls N] [--concurrency C] [--rounds R] [--priced]
       [--key-options "--rpm 1000000 --tpm 100000000 --budget-usd 1000000"] [--compare DIR]
       [--limits JSON] [--compare-limits JSON] [--compare-direct [--compare-pgbouncer]]
       [--env NAME=VALUE ...]

``--env`` sets a variable for this side's gateway only (e.g. ``OTEL_TRACES_EXPORTER=otlp``
and an endpoint, against ``--compare`` of the same checkout: what tracing costs when on).

``--key-options`` creates the bench key with rate limits and/or a budget (high enough that
nothing is refused), to measure what enforcing them costs per call.

``--compare-direct`` gives the compare side ``DATABASE_DIRECT_URL`` (its own database: the
transaction-pooler setting without a pooler, so only the setting's cost shows);
``--compare-pgbouncer`` also sends its ``DATABASE_URL`` through PgBouncer in transaction
mode (PgBouncer's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
from pathlib import Path

import httpx
import psutil

from app.testing.config import write_config
from app.testing.measure import CpuMeter, cpu_seconds
from app.testing.pgbouncer import run_pgbouncer
from app.testing.postgres import database_server
from app.testing.processes import Process, create_key, start_gateway, start_mock_upstream


def system_s(pid: int) -> float:
    """System CPU seconds of a process (its system calls: mostly socket reads and writes)."""
    return psutil.Process(pid).cpu_times().system


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


def _figures(values: list[float]) -> str:
    return f"median {statistics.median(values):4.0f} us ({', '.join(f'{v:.0f}' for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--priced", action="store_true", help="give the model a price")
    parser.add_argument(
        "--key-options", default="", help="options of keys create: --rpm, --tpm, --budget-usd"
    )
    parser.add_argument("--compare", help="another checkout to run alternately with this one")
    parser.add_argument(
        "--limits", default="{}", help="the config's limits, as JSON, for this side"
    )
    parser.add_argument(
        "--compare-limits",
        help="the compare side's limits, as JSON (default: --limits); --compare may then name"
        " this same checkout, to measure a setting",
    )
    parser.add_argument(
        "--compare-direct",
        action="store_true",
        help="the compare side runs with DATABASE_DIRECT_URL (its own database)",
    )
    parser.add_argument(
        "--compare-pgbouncer",
        action="store_true",
        help="with --compare-direct: the compare side's DATABASE_URL is PgBouncer's, in"
        " transaction mode",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable for this side's gateway only (repeatable)",
    )
    args = parser.parse_args()
    this_env = dict(pair.split("=", 1) for pair in args.env)
    here = str(Path(__file__).resolve().parent.parent)
    sides = {"this": here, **({"compare": args.compare} if args.compare else {})}
    work = Path(tempfile.mkdtemp(prefix="tiergate-cpu-"))
    model: dict[str, object] = {"name": "remote", "upstream": ""}
    # per side: gateway (and its system time), mock, postgres and client CPU per call (us)
    figures: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
    processes: list[Process] = []
    with database_server(work / "home") as factory, contextlib.ExitStack() as stack:
        try:
            upstream, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            assert mock.proc is not None
            mock_pid = mock.proc.pid
            model["upstream"] = f"{upstream}/v1"
            if args.priced:
                model["pricing"] = {"input_per_mtok": 3, "output_per_mtok": 15}
            limits = {"this": json.loads(args.limits)}
            limits["compare"] = json.loads(args.compare_limits or args.limits)
            configs = {
                side: write_config(work / f"tiergate-{side}.yaml", [model], limits[side])
                for side in sides
            }
            gateways = {}
            meter = None
            for side, root in sides.items():
                database = factory.create()
                db = database.libpq()
                meter = meter or CpuMeter(db, {})
                key = create_key(db, "bench", options=args.key_options.split())
                env = {"PYTHONPATH": root, **(this_env if side == "this" else {})}
                if side == "compare" and args.compare_direct:
                    env["DATABASE_DIRECT_URL"] = db
                    if args.compare_pgbouncer:
                        bouncer = stack.enter_context(
                            run_pgbouncer(database, work / "pgbouncer", pool_mode="transaction")
                        )
                        db = bouncer.url(database).libpq()
                gw = start_gateway(
                    database_url=db,
                    config=configs[side],
                    log=work / f"gw-{side}.log",
                    worker=False,
                    env=env,
                    cwd=work,  # so that PYTHONPATH, not the current directory, names the code
                )
                processes.append(gw.process)
                assert gw.process.proc is not None
                gateways[side] = (gw.api + "/chat/completions", key, gw.process.proc.pid)
                asyncio.run(calls(gateways[side][0], key, 300, args.concurrency))  # warm up
            assert meter is not None
            for _ in range(args.rounds):  # alternating, as this VM's speed drifts
                for side, (url, key, pid) in gateways.items():
                    before = (cpu_seconds(pid), cpu_seconds(mock_pid), meter.read(), system_s(pid))
                    asyncio.run(calls(url, key, args.calls, args.concurrency))
                    after = (cpu_seconds(pid), cpu_seconds(mock_pid), meter.read(), system_s(pid))
                    used = {
                        "gateway": after[0] - before[0],
                        "gw system": after[3] - before[3],
                        "mock": after[1] - before[1],
                        "client": after[2]["load generator"] - before[2]["load generator"],
                    }
                    if "postgres" in after[2]:
                        used["postgres"] = after[2]["postgres"] - before[2]["postgres"]
                    for part, seconds in used.items():
                        figures[side].setdefault(part, []).append(seconds / args.calls * 1e6)
                    figures[side].setdefault("ratio", []).append(used["gateway"] / used["mock"])
        finally:
            for process in reversed(processes):
                process.stop()

    setup = f"{args.rounds} rounds of {args.calls} calls at concurrency {args.concurrency}"
    setup += ", priced model" if args.priced else ""
    setup += f", key: {args.key_options}" if args.key_options else ""
    print(f"CPU per realtime call ({setup})")
    for side, parts in figures.items():
        if len(sides) > 1:
            shown = f" limits {limits[side]}" if limits[side] else ""
            if side == "compare" and args.compare_direct:
                shown += " + DATABASE_DIRECT_URL"
                shown += (
                    " (DATABASE_URL: PgBouncer, transaction mode)" if args.compare_pgbouncer else ""
                )
            print(f"{side}: {sides[side]}{shown}")
        for part in ("gateway", "gw system", "mock", "postgres", "client"):
            if part in parts:
                print(f"  {part:9} CPU per realtime call: {_figures(parts[part])}")
        ratios = ", ".join(f"{v:.2f}" for v in parts["ratio"])
        print(f"  gateway / mock CPU: median {statistics.median(parts['ratio']):.2f} ({ratios})")


if __name__ == "__main__":
    main()
