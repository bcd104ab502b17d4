"""Scale bench: does a request cost the same with millions of rows of history?

One run, real processes on loopback (embedded PostgreSQL unless DATABASE_URL is set, the mock
upstream at 0 ms, a gateway with its in-process worker). It measures, on the empty database,
then seeds it as a deployment's history would look (COPY-free: ``generate_series`` in a few
statements) and measures again, on the same processes:

- blocking flex end to end, p50 (sequential calls);
- ``GET /v1/responses/{id}``, p50;
- a 10,000-line batch: time from create to completed, and PostgreSQL's CPU meanwhile;
- ``GET /metrics``, p50;
- one maintenance sweep (the statements every worker runs every ``maintenance_every_s``);
- PostgreSQL's CPU while tiergate sits idle for 30 s (its workers and gateway running);

and prints each after/before ratio (targets: ≤ 1.5, and idle PostgreSQL under 2 % of a core).
The seed: ``--rows`` finished requests (default 5,000,000), ``--pending`` queued ones for a
model no worker serves (default 1,000,000; one in ten waiting for a retry), and
procrastinate history (``--jobs`` finished jobs, default 1,000,000, three events each).

Usage: python bench/scale.py [--rows N] [--pending N] [--jobs N] [--flex N] [--lines N]
       [--explain FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import httpx
import psycopg

from app.settings import Settings
from app.store.db import create_engine
from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.measure import CpuMeter
from app.testing.postgres import database_server
from app.testing.processes import create_key, start_gateway, start_mock_upstream
from worker.runner import maintenance_for

try:  # run as a script (python bench/scale.py) or imported as bench.scale (the smoke test)
    from bench.explain import explain
except ModuleNotFoundError:
    from explain import explain  # type: ignore[no-redef]

IDLE_S = float(os.environ.get("TIERGATE_SCALE_IDLE_S", "30"))


@dataclass
class Figures:
    """One set of measurements."""

    flex_p50_ms: float = 0.0
    get_p50_ms: float = 0.0
    batch_s: float = 0.0
    batch_pg_cpu_s: float = 0.0
    metrics_p50_ms: float = 0.0
    sweep_ms: float = 0.0
    idle_pg_core: float = 0.0  # share of one core


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def seed(db: str, rows: int, pending: int, jobs: int, log: bool = True) -> dict[str, float]:
    """Fill the database with history; returns seconds per part."""
    took: dict[str, float] = {}
    with psycopg.connect(db, autocommit=True) as conn:
        (owner,) = conn.execute("SELECT id FROM api_keys LIMIT 1").fetchone() or ("",)
        steps = {
            "finished requests": (
                "INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier,"
                " background, status, attempts, body, response_status, response_body,"
                " input_tokens, output_tokens, total_tokens, created_at, started_at,"
                " finished_at, expires_at, claimed_by)"
                " SELECT 'resp_seed' || n, %(owner)s, '/v1/responses', 'remote',"
                " CASE WHEN n %% 3 = 0 THEN 'default' ELSE 'flex' END, n %% 7 = 0, 'completed', 1,"
                ' \'{"model": "remote", "input": "seeded history"}\', 200,'
                ' \'{"object": "response", "output": []}\', 3, 4, 7,'
                " now() - make_interval(secs => n %% 2592000), now(), now(), now(), 'wk_seed'"
                " FROM generate_series(1, %(n)s) AS n",
                rows,
            ),
            "pending requests": (
                "INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier,"
                " background, status, body, created_at, expires_at, not_before)"
                " SELECT 'resp_backlog' || n, %(owner)s, '/v1/responses', 'unserved', 'flex',"
                ' true, \'pending\', \'{"model": "unserved", "input": "waiting"}\', now(),'
                " now() + interval '1 day',"
                " CASE WHEN n %% 10 = 0 THEN now() + interval '1 hour' END"
                " FROM generate_series(1, %(n)s) AS n",
                pending,
            ),
            # Jobs and their events in one statement: a job without events would look
            # finished long ago to the retention pass running meanwhile.
            "procrastinate jobs and events": (
                "WITH j AS ("
                " INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
                " SELECT 'batch', 'tiergate.run_batch', jsonb_build_object('batch_id', 'b' || n),"
                " 'succeeded' FROM generate_series(1, %(n)s) AS n RETURNING id)"
                " INSERT INTO procrastinate_events (job_id, type, at)"
                " SELECT j.id, e.type::procrastinate_job_event_type, now()"
                " FROM j, unnest(ARRAY['deferred', 'started', 'succeeded']) AS e(type)",
                jobs,
            ),
        }
        # procrastinate's triggers would NOTIFY and log an event per seeded job.
        conn.execute("ALTER TABLE procrastinate_jobs DISABLE TRIGGER USER")
        try:
            for name, (statement, n) in steps.items():
                started = time.perf_counter()
                if n:
                    conn.execute(statement, {"owner": owner, "n": n})
                took[name] = time.perf_counter() - started
                if log:
                    print(f"  seeded {name}: {n} in {took[name]:.0f} s", flush=True)
        finally:
            conn.execute("ALTER TABLE procrastinate_jobs ENABLE TRIGGER USER")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE requests")
        conn.execute("VACUUM ANALYZE procrastinate_jobs")
        conn.execute("VACUUM ANALYZE procrastinate_events")
        took["vacuum analyze"] = time.perf_counter() - started
    return took


def table_bytes(db: str) -> dict[str, int]:
    """On-disk size of the big tables, indexes and TOAST included."""
    with psycopg.connect(db, autocommit=True) as conn:
        return {
            name: conn.execute("SELECT pg_total_relation_size(%s)", (name,)).fetchone()[0]
            for name in ("requests", "procrastinate_jobs", "procrastinate_events")
        }


async def flex_p50(api: str, key: str, n: int) -> tuple[float, list[str]]:
    """Sequential blocking flex calls: p50 ms and their ids."""
    took, ids = [], []
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "remote", "input": "scale", "service_tier": "flex"}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(n):
            started = time.perf_counter()
            response = await client.post(api + "/responses", json=body, headers=headers)
            took.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            ids.append(response.headers["x-request-id"])
    return p50(took), ids


async def get_p50(api: str, key: str, ids: list[str]) -> float:
    took = []
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as client:
        for rid in ids:
            started = time.perf_counter()
            (await client.get(f"{api}/responses/{rid}", headers=headers)).raise_for_status()
            took.append((time.perf_counter() - started) * 1000)
    return p50(took)


def metrics_p50(url: str, n: int = 20) -> float:
    took = []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.get(url + "/metrics").raise_for_status()
            took.append((time.perf_counter() - started) * 1000)
    return p50(took)


def run_batch(api: str, key: str, lines: int) -> float:
    """Seconds from create to completed for a batch of ``lines`` chat lines."""
    content = io.BytesIO()
    for n in range(lines):
        line = {
            "custom_id": f"line-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "remote", "messages": [{"role": "user", "content": f"hi {n}"}]},
        }
        content.write((json.dumps(line) + "\n").encode())
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=120) as client:
        upload = client.post(
            "/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", content.getvalue())}
        )
        upload.raise_for_status()
        started = time.perf_counter()
        batch = client.post(
            "/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ).json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.1)
            batch = client.get(f"/batches/{batch['id']}").json()
        if batch["status"] != "completed":
            raise RuntimeError(f"batch ended {batch['status']}: {batch.get('errors')}")
        return time.perf_counter() - started


async def sweep_ms(url: DatabaseURL, settings: Settings) -> float:
    """One maintenance sweep, as a worker runs it (median of three)."""
    engine = create_engine(url, pool_size=2, max_overflow=0, application_name="tiergate-bench")
    try:
        maintenance = maintenance_for(engine, settings)
        took = []
        for _ in range(3):
            started = time.perf_counter()
            await maintenance.sweep()
            took.append((time.perf_counter() - started) * 1000)
        return p50(took)
    finally:
        await engine.dispose()


def settle(db: str) -> None:
    """Let the database come to rest: a checkpoint, and no autovacuum at work (a seeded
    history otherwise bills its own clean-up to the first measurements)."""
    with psycopg.connect(db, autocommit=True) as conn:
        with contextlib.suppress(psycopg.Error):  # needs a superuser (the embedded server)
            conn.execute("CHECKPOINT")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).fetchone()
            if not found or not found[0]:
                return
            time.sleep(0.5)


def measure(ctx: dict[str, object], flex: int, lines: int) -> Figures:
    api, url, key = str(ctx["api"]), str(ctx["url"]), str(ctx["key"])
    db: DatabaseURL = ctx["db"]  # type: ignore[assignment]
    settings: Settings = ctx["settings"]  # type: ignore[assignment]
    meter: CpuMeter = ctx["meter"]  # type: ignore[assignment]
    figures = Figures()
    settle(db.libpq())
    figures.flex_p50_ms, ids = asyncio.run(flex_p50(api, key, flex))
    figures.get_p50_ms = asyncio.run(get_p50(api, key, ids))
    before = meter.read().get("postgres", 0.0)
    figures.batch_s = run_batch(api, key, lines)
    figures.batch_pg_cpu_s = meter.read().get("postgres", 0.0) - before
    figures.metrics_p50_ms = metrics_p50(url)
    figures.sweep_ms = asyncio.run(sweep_ms(db, settings))
    time.sleep(5.0)  # let the batch's finalize and the workers settle before the idle window
    before = meter.read().get("postgres", 0.0)
    time.sleep(IDLE_S)
    figures.idle_pg_core = (meter.read().get("postgres", 0.0) - before) / IDLE_S
    return figures


def report(before: Figures, after: Figures, sizes: dict[str, int], rows: int) -> list[str]:
    out = []
    for f in fields(Figures):
        b, a = getattr(before, f.name), getattr(after, f.name)
        ratio = a / b if b else float("nan")
        if f.name == "idle_pg_core":
            out.append(
                f"  {f.name:<16} before {b:7.1%}  after {a:7.1%}  (target after < 2% of a core)"
            )
        else:
            out.append(f"  {f.name:<16} before {b:9.2f}  after {a:9.2f}  ratio {ratio:5.2f}")
    per_million = sizes["requests"] / max(rows, 1) * 1_000_000
    history = sizes["procrastinate_jobs"] + sizes["procrastinate_events"]
    out.append(
        f"  disk             requests {sizes['requests'] / 2**30:.2f} GiB"
        f" ({per_million / 2**20:.0f} MiB per million rows, indexes included);"
        f" procrastinate jobs + events {history / 2**30:.2f} GiB"
    )
    return out


def run_scale(
    work: Path,
    rows: int,
    pending: int,
    jobs: int,
    flex: int,
    lines: int,
    explain_to: str | None = None,
) -> tuple[Figures, Figures, list[str]]:
    """The whole bench; returns (before, after, report lines)."""
    processes = []
    with database_server(work / "home") as factory:
        try:
            upstream, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            config = write_config(
                work / "tiergate.yaml",
                [{"name": "remote", "upstream": f"{upstream}/v1", "flex_concurrency": 64}],
                {"max_batch_lines": max(lines, 50_000)},
            )
            db = factory.create()
            key = create_key(db.libpq(), "scale")
            gateway = start_gateway(database_url=db.libpq(), config=config, log=work / "gw.log")
            processes.append(gateway.process)
            assert gateway.process.proc is not None
            settings = Settings.from_env({"TIERGATE_CONFIG": str(config)})
            ctx: dict[str, object] = {
                "api": gateway.api,
                "url": gateway.url,
                "key": key,
                "db": db,
                "settings": settings,
                "meter": CpuMeter(db.libpq(), {"gateway": [gateway.process.proc.pid]}),
            }
            print("measuring on the empty database", flush=True)
            before = measure(ctx, flex, lines)
            print(f"seeding {rows} finished, {pending} pending requests, {jobs} jobs", flush=True)
            started = time.perf_counter()
            seed(db.libpq(), rows, pending, jobs)
            seeded_in = time.perf_counter() - started
            sizes = table_bytes(db.libpq())
            print("measuring again", flush=True)
            after = measure(ctx, flex, lines)
            if explain_to:
                plans = explain(db.libpq())
                Path(explain_to).write_text("\n".join(plans) + "\n")
                print(f"plans of the hot statements in {explain_to}:")
                print("\n".join(line for line in plans if line.startswith("-- ")), flush=True)
            when = dt.date.today().isoformat()
            lines_out = [
                f"tiergate scale bench ({when}, {os.cpu_count()} cores): {rows} finished and"
                f" {pending} pending requests, {jobs} procrastinate jobs ({3 * jobs} events),"
                f" seeded in {seeded_in:.0f} s",
                f"  each: {flex} sequential blocking flex calls, as many GETs by id, a"
                f" {lines}-line batch, 20 GET /metrics, 3 sweeps, {IDLE_S:.0f} s idle",
                *report(before, after, sizes, rows + pending),
            ]
            return before, after, lines_out
        finally:
            for process in processes:
                process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000, help="finished requests")
    parser.add_argument("--pending", type=int, default=1_000_000, help="queued requests")
    parser.add_argument("--jobs", type=int, default=1_000_000, help="finished procrastinate jobs")
    parser.add_argument("--flex", type=int, default=200, help="sequential flex calls")
    parser.add_argument("--lines", type=int, default=10_000, help="lines of the batch")
    parser.add_argument(
        "--explain",
        metavar="FILE",
        help="write EXPLAIN ANALYZE of the hot"
        " statements on the seeded database to FILE (bench/explain.py)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiergate-scale-"))
    _, _, out = run_scale(
        work, args.rows, args.pending, args.jobs, args.flex, args.lines, args.explain
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
