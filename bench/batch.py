"""Batch API benchmark: a 50,000-line batch from upload to downloaded output.

Real processes on loopback: embedded PostgreSQL, the mock upstream at 0 ms, the gateway with
its in-process worker (as `make serve` runs it), or `--workers N` separate worker processes.
Also measures procrastinate's raw no-op job rate on the same machine, in the same run, as the
baseline the line rate is compared with.

Usage: python bench/batch.py [--lines 50000] [--workers 0]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import procrastinate

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.measure import CpuMeter
from app.testing.postgres import database_server
from app.testing.processes import create_key, start_gateway, start_mock_upstream, start_worker


async def noop_job_rate(url: DatabaseURL, jobs: int) -> float:
    """procrastinate alone: defer ``jobs`` no-op jobs in bulk, time one worker draining them."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url.libpq()))

    @app.task(name="bench.noop", queue="bench")
    async def noop(i: int) -> None:
        return None

    async with app.open_async():
        await noop.batch_defer_async(*({"i": i} for i in range(jobs)))
        start = time.perf_counter()
        await app.run_worker_async(
            queues=["bench"], wait=False, concurrency=8, install_signal_handlers=False
        )
        return jobs / (time.perf_counter() - start)


def make_input(lines: int) -> bytes:
    out = io.StringIO()
    for i in range(lines):
        body = {"model": "remote", "messages": [{"role": "user", "content": f"line {i}"}]}
        out.write(
            json.dumps(
                {
                    "custom_id": f"req-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
            + "\n"
        )
    return out.getvalue().encode()


def run_batch(api: str, key: str, content: bytes) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    marks: dict[str, float] = {}
    with httpx.Client(base_url=api, headers=headers, timeout=300) as client:
        start = time.perf_counter()
        uploaded = client.post(
            "/files", data={"purpose": "batch"}, files={"file": ("bench.jsonl", content)}
        )
        uploaded.raise_for_status()
        marks["uploaded"] = time.perf_counter() - start
        batch = client.post(
            "/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ).json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)  # a client polling twice a second
            batch = client.get(f"/batches/{batch['id']}").json()
            if batch["status"] == "in_progress" and "in_progress" not in marks:
                marks["in_progress"] = time.perf_counter() - start
            if batch["status"] == "finalizing" and "finalizing" not in marks:
                marks["finalizing"] = time.perf_counter() - start
        marks["completed"] = time.perf_counter() - start
        output = client.get(f"/files/{batch['output_file_id']}/content").content
        marks["downloaded"] = time.perf_counter() - start
    ids = {json.loads(line)["custom_id"] for line in output.splitlines()}
    return {
        "marks": marks,
        "status": batch["status"],
        "counts": batch["request_counts"],
        "unique_ids": len(ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=0, help="extra worker processes")
    parser.add_argument("--noop-jobs", type=int, default=3000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    processes = []
    with database_server(work / "home") as factory:
        try:
            noop_rate = asyncio.run(noop_job_rate(factory.create(), args.noop_jobs))
            upstream_url, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            config = write_config(
                work / "tiergate.yaml",
                [{"name": "remote", "upstream": f"{upstream_url}/v1", "flex_concurrency": 64}],
            )
            db = factory.create().libpq()
            key = create_key(db, "bench")
            gateway = start_gateway(
                database_url=db, config=config, log=work / "gw.log", worker=args.workers == 0
            )
            processes.append(gateway.process)
            for i in range(args.workers):
                processes.append(
                    start_worker(
                        database_url=db, config=config, log=work / f"w{i}.log", concurrency=16
                    )
                )
            content = make_input(args.lines)
            parts: dict[str, list[int]] = {"mock": [], "gateway": [], "workers": []}
            for process, part in zip(processes, parts, strict=False):  # mock, gateway, workers
                assert process.proc is not None
                parts[part].append(process.proc.pid)
            for process in processes[3:]:
                assert process.proc is not None
                parts["workers"].append(process.proc.pid)
            meter = CpuMeter(db, {part: pids for part, pids in parts.items() if pids})
            before = meter.read()
            result = run_batch(gateway.api, key, content)
            after = meter.read()
        finally:
            for process in processes:
                process.stop()

    marks = result["marks"]
    total = marks["downloaded"]
    rate = args.lines / total
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    setup = f"{args.workers} worker process(es)" if args.workers else "in-process worker"
    print(f"tiergate batch bench ({when}, {os.cpu_count()} cores, mock upstream at 0 ms, {setup})")
    print(
        f"{args.lines} lines ({len(content) / 1e6:.1f} MB): status {result['status']}, "
        f"counts {result['counts']}, {result['unique_ids']} unique custom_ids in the output"
    )
    print("  " + ", ".join(f"{k} at {v:.1f} s" for k, v in marks.items()))
    print(
        f"upload to downloaded output: {total:.1f} s = {rate:.0f} lines/s "
        f"(target <= 60 s, >= 800 lines/s)"
    )
    used = {part: (after[part] - before[part]) / args.lines * 1e6 for part in after}
    print(
        "CPU per line (whatever the machine's load): "
        + ", ".join(f"{part} {us:.0f} us" for part, us in used.items())
    )
    print(
        f"procrastinate no-op jobs: {noop_rate:.0f} jobs/s; batch lines/s / no-op jobs/s = "
        f"{rate / noop_rate:.2f}"
    )


if __name__ == "__main__":
    main()
