"""Batch executor benchmark: a 20,000-line Batch API batch run through a provider's Batch API.

Real processes on loopback: embedded PostgreSQL, the mock provider, the gateway with its
in-process worker (as `make serve` runs it), or `--workers N` separate worker processes. The
model's deployment is `executor: batch` against the mock's OpenAI-format Batch API, whose jobs
take `--turnaround-s` (sent as `turnaround_ms` in the deployment's `x-mock-behavior` header).
A client uploads the batch's file to tiergate, creates the batch, polls it twice a second and
downloads the output. Printed:

- the time from the batch's create call to `completed` with its output downloaded, and that
  time minus the mock's turnaround (target: turnaround + <= 10 s);
- the upstream calls by kind, from the mock's `/_mock/stats` (target: <= 50 in all; the
  mock's `BATCH ...` counters are lines it runs internally, not calls);
- CPU per line of tiergate (gateway + worker processes) and of PostgreSQL, from the upload to
  the downloaded output (target: <= 0.3 ms per line for tiergate); with `--compare-direct`
  (the default) the same lines, in the same process run, as a batch of a `direct` model
  against the mock at 0 ms, and the ratio.

The deployment's batch settings (printed) and why:

- `gather_s: 1`: every second spent gathering is added to the batch's time. The run jobs hand
  a 20,000-line batch over within a few tenths of a second (`limits.batch_chunk: 5000`, four
  run jobs per batch: a few claims, not one per 200 lines; the timeline printed shows it), so
  1 s gathers it into one provider job; a shorter gather could split it into several jobs
  (each one more upload, create, download and its own polls), a longer one only waits.
- `poll_min_s: 1`, `poll_max_s: 2`: a job is polled after 1 s, then every 2 s. The end is
  noticed at most 2 s late (1 s on average) and a 30 s job costs about 16 polls; polls
  ~ log2(max/min) + turnaround / poll_max_s, so halving `poll_max_s` doubles the polls for
  1 s less lag, and doubling it (4 s) halves them for up to 2 s more. With real providers'
  turnarounds (minutes to hours) the default `poll_max_s: 60` is the right trade; here the
  target (turnaround + 10 s) leaves room for validating, gathering (1 s), uploading, the poll
  lag (<= 2 s), and collecting and finalizing 20,000 lines.
- `max_lines: 50000` (one job for the whole batch), `turnaround_s`/`margin_s` at their
  defaults (a 24 h window leaves room for a job), `completion_window: 24h`.

Usage: python bench/batch_executor.py [--lines 20000] [--turnaround-s 30] [--workers 0]
       [--no-compare-direct]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.testing.config import write_config
from app.testing.measure import CpuMeter
from app.testing.postgres import database_server
from app.testing.processes import create_key, start_gateway, start_mock_upstream, start_worker

BATCH_SETTINGS: dict[str, Any] = {
    "api": "openai",
    "max_lines": 50_000,
    "gather_s": 1,
    "poll_min_s": 1,
    "poll_max_s": 2,
    "completion_window": "24h",
}
LIMITS: dict[str, Any] = {"batch_chunk": 5000}
KINDS = ("uploads", "creates", "polls", "downloads", "lists", "cancels", "other")


def make_input(model: str, lines: int) -> bytes:
    out = io.StringIO()
    for i in range(lines):
        body = {"model": model, "messages": [{"role": "user", "content": f"line {i}"}]}
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


def run_batch(api: str, key: str, content: bytes) -> dict[str, Any]:
    """Upload, create, poll twice a second, download: marks in seconds since the upload."""
    headers = {"Authorization": f"Bearer {key}"}
    marks: dict[str, float] = {}
    with httpx.Client(base_url=api, headers=headers, timeout=300) as client:
        start = time.perf_counter()
        uploaded = client.post(
            "/files", data={"purpose": "batch"}, files={"file": ("bench.jsonl", content)}
        )
        uploaded.raise_for_status()
        marks["create"] = time.perf_counter() - start
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
            if batch["status"] == "finalizing" and "finalizing" not in marks:
                marks["finalizing"] = time.perf_counter() - start
        marks["completed"] = time.perf_counter() - start
        output = b""
        if batch.get("output_file_id"):
            output = client.get(f"/files/{batch['output_file_id']}/content").content
        marks["downloaded"] = time.perf_counter() - start
    ids = {json.loads(line)["custom_id"] for line in output.splitlines()}
    return {
        "marks": marks,
        "status": batch["status"],
        "counts": batch["request_counts"],
        "unique_ids": len(ids),
    }


def kind_of(counter: str) -> str | None:
    """Which kind of upstream call a `/_mock/stats` counter is (None: not a call)."""
    if counter.startswith("BATCH "):
        return None  # a line the mock ran inside a job
    if counter == "/v1/files":
        return "uploads"
    if counter == "/v1/batches":
        return "creates"
    if counter == "GET /v1/batches":
        return "lists"
    if re.fullmatch(r"GET /v1/batches/[^/]+", counter):
        return "polls"
    if re.fullmatch(r"GET /v1/files/[^/]+/content", counter):
        return "downloads"
    if counter.endswith("/cancel"):
        return "cancels"
    return "other"


def calls_by_kind(before: dict[str, int], after: dict[str, int]) -> Counter[str]:
    calls: Counter[str] = Counter()
    for counter, n in after.items():
        kind = kind_of(counter)
        if kind is not None and n > before.get(counter, 0):
            calls[kind] += n - before.get(counter, 0)
    return calls


def mock_stats(url: str) -> dict[str, int]:
    found: dict[str, int] = httpx.get(f"{url}/_mock/stats", timeout=10).json()
    return found


def measured(meter: CpuMeter, api: str, key: str, content: bytes, mock_url: str) -> dict[str, Any]:
    stats = mock_stats(mock_url)
    before = meter.read()
    result = run_batch(api, key, content)
    after = meter.read()
    result["cpu"] = {part: after[part] - before[part] for part in after}
    result["calls"] = calls_by_kind(stats, mock_stats(mock_url))
    return result


def timeline(db: str, model: str) -> str:
    """Where the time went, from PostgreSQL: seconds since the batch was created."""
    with psycopg.connect(db, autocommit=True) as conn:
        batch = conn.execute(
            "SELECT id, created_at, in_progress_at, finalizing_at, completed_at FROM batches"
            " WHERE id = (SELECT batch_id FROM requests WHERE model = %s AND batch_id IS NOT"
            " NULL LIMIT 1)",
            (model,),
        ).fetchone()
        assert batch is not None
        start = batch[1]
        lines = conn.execute(
            "SELECT min(started_at), max(started_at) FROM requests WHERE batch_id = %s",
            (batch[0],),
        ).fetchone()
        assert lines is not None
        jobs = conn.execute(
            "SELECT created_at, submitted_at, ended_at, rows, polls FROM upstream_jobs"
            " WHERE model = %s ORDER BY created_at",
            (model,),
        ).fetchall()

    def at(when: dt.datetime | None) -> str:
        return "-" if when is None else f"{(when - start).total_seconds():.1f}"

    parts = [f"in_progress {at(batch[2])}", f"lines claimed {at(lines[0])}-{at(lines[1])}"]
    parts += [
        f"job {i + 1} ({rows} rows, {polls} polls): attached {at(created)}, "
        f"submitted {at(submitted)}, ended {at(ended)}"
        for i, (created, submitted, ended, rows, polls) in enumerate(jobs)
    ]
    parts += [f"finalizing {at(batch[3])}", f"completed {at(batch[4])}"]
    return "; ".join(parts)


def provider_seconds(db: str, mock_url: str, model: str) -> float:
    """How long the provider's jobs ran by its own clock (whole seconds: OpenAI's batch
    objects carry Unix seconds), from the first job's creation to the last one's end."""
    with psycopg.connect(db, autocommit=True) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT upstream_batch_id FROM upstream_jobs WHERE model = %s", (model,)
            ).fetchall()
        ]
    jobs = [httpx.get(f"{mock_url}/v1/batches/{job}", timeout=10).json() for job in ids]
    ends = [job.get("completed_at") or job.get("failed_at") or 0 for job in jobs]
    return float(max(ends) - min(job["created_at"] for job in jobs))


def cpu_line(result: dict[str, Any], lines: int) -> tuple[float, str]:
    cpu = result["cpu"]
    tiergate = (cpu.get("gateway", 0.0) + cpu.get("workers", 0.0)) / lines * 1e3
    parts = ", ".join(f"{part} {used / lines * 1e3:.3f}" for part, used in cpu.items())
    return tiergate, f"tiergate {tiergate:.3f} ms ({parts})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--turnaround-s", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=0, help="separate worker processes")
    parser.add_argument("--compare-direct", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    turnaround_ms = round(args.turnaround_s * 1000)
    work = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    processes = []
    with database_server(work / "home") as factory:
        try:
            mock_url, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            deployment = {
                "name": "provider",
                "upstream": f"{mock_url}/v1",
                "headers": {"x-mock-behavior": f"turnaround_ms={turnaround_ms}"},
                "executor": "batch",
                "batch": BATCH_SETTINGS,
            }
            config = write_config(
                work / "tiergate.yaml",
                [
                    {"name": "paid", "deployments": [deployment], "flex_concurrency": 64},
                    {"name": "owned", "upstream": f"{mock_url}/v1", "flex_concurrency": 64},
                ],
                LIMITS,
            )
            db = factory.create().libpq()
            key = create_key(db, "bench")
            gateway = start_gateway(
                database_url=db, config=config, log=work / "gw.log", worker=args.workers == 0
            )
            processes.append(gateway.process)
            workers = [
                start_worker(database_url=db, config=config, log=work / f"w{i}.log", concurrency=16)
                for i in range(args.workers)
            ]
            processes += workers
            pids: dict[str, list[int]] = {"mock": [], "gateway": [], "workers": []}
            for part, process in (("mock", mock), ("gateway", gateway.process)):
                assert process.proc is not None
                pids[part].append(process.proc.pid)
            for process in workers:
                assert process.proc is not None
                pids["workers"].append(process.proc.pid)
            meter = CpuMeter(db, {part: found for part, found in pids.items() if found})
            batch = measured(meter, gateway.api, key, make_input("paid", args.lines), mock_url)
            batch["timeline"] = timeline(db, "paid")
            batch["provider_s"] = provider_seconds(db, mock_url, "paid")
            direct = None
            if args.compare_direct:
                direct = measured(
                    meter, gateway.api, key, make_input("owned", args.lines), mock_url
                )
        finally:
            for process in processes:
                process.stop()

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    setup = f"{args.workers} worker process(es)" if args.workers else "in-process worker"
    print(
        f"tiergate batch executor bench ({when}, {os.cpu_count()} cores, {setup}, "
        f"mock provider turnaround {args.turnaround_s:g} s)"
    )
    print(f"deployment batch: {json.dumps(BATCH_SETTINGS)}; limits: {json.dumps(LIMITS)}")
    marks = batch["marks"]
    print(
        f"{args.lines} lines: status {batch['status']}, counts {batch['counts']}, "
        f"{batch['unique_ids']} unique custom_ids in the output"
    )
    print("  " + ", ".join(f"{k} at {v:.1f} s" for k, v in marks.items()))
    print(f"  since the batch's creation (s): {batch['timeline']}")
    total = marks["downloaded"] - marks["create"]
    over = total - args.turnaround_s
    print(
        f"create to downloaded output: {total:.1f} s = turnaround + {over:.1f} s "
        f"(target: turnaround + <= 10 s: {'met' if over <= 10 else 'MISSED'})"
    )
    print(
        f"  the provider's job took {batch['provider_s']:.0f} s by its clock (the mock's "
        f"turnaround when it keeps up); create to output minus that: "
        f"{total - batch['provider_s']:.1f} s"
    )
    calls = batch["calls"]
    print(
        "upstream calls: "
        + ", ".join(f"{kind} {calls[kind]}" for kind in KINDS if calls[kind] or kind != "other")
        + f"; {sum(calls.values())} in all (target <= 50: "
        f"{'met' if sum(calls.values()) <= 50 else 'MISSED'})"
    )
    per_line, text = cpu_line(batch, args.lines)
    print(
        f"CPU per line, batch executor: {text} "
        f"(target tiergate <= 0.3 ms: {'met' if per_line <= 0.3 else 'MISSED'})"
    )
    if direct is not None:
        direct_line, direct_text = cpu_line(direct, args.lines)
        took = direct["marks"]["downloaded"] - direct["marks"]["create"]
        print(
            f"CPU per line, direct at 0 ms:  {direct_text}; "
            f"{direct['status']} in {took:.1f} s, {sum(direct['calls'].values())} upstream calls"
        )
        print(
            f"tiergate CPU per line, batch / direct = {per_line / direct_line:.2f}; "
            f"postgres batch / direct = "
            f"{batch['cpu']['postgres'] / max(direct['cpu']['postgres'], 1e-9):.2f}"
        )


if __name__ == "__main__":
    main()
