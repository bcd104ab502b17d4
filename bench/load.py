"""Load benchmark: thousands of blocking flex clients while a Batch API batch runs.

Topology, as a user would run it (all real processes on loopback): PostgreSQL (embedded unless
``DATABASE_URL`` is set), ``tiergate mock-upstream --latency-ms L``, ``--gateways N`` processes
of ``tiergate serve --no-worker`` (one by default) with explicit ``limits``, and ``--workers N``
processes of ``tiergate worker``, all on one database. On one set of processes it runs three
phases: the flex clients alone, the batch alone, then both at once (a batch is submitted, and
once it is ``in_progress`` the clients open their connections and wait for their answers).
Clients go to the gateways in turn (client i to gateway i mod N); the batch is created at the
first gateway and polled at each in turn. A sampler thread reads, every 0.1 s, the gateways'
and workers' PostgreSQL connections (``pg_stat_activity`` by ``application_name``, summed over
the gateways: they share one name) and their RSS, and every 0.25 s each gateway's ``/metrics``
(blocking clients waiting) and the sockets this process holds open to the gateways.

Exits non-zero if a promise is broken: a client failed or got no answer within ``--deadline``,
the gateways held more PostgreSQL connections than N x (``db_pool_size + db_max_overflow`` + 1
LISTEN), the workers more than N x (``min(concurrency, 10) + job_pool_size`` + 2 LISTEN), a
batch line is missing or doubled, or a gateway's RSS passed ``--max-rss-mb``.
Timings are printed, never asserted.

Usage: python bench/load.py [--clients 2000] [--lines 10000] [--gateways 1] [--workers 2]
                            [--latency-ms 100] [--compare-default]
       python bench/load.py --quick     # 200 clients, 1,000 lines: a smoke run
``--compare-default`` first runs the default topology (1 gateway, 2 workers) on a database of
its own, then the one asked for, and prints the ratios of their figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import psycopg

from app.store.dburl import DatabaseURL
from app.testing.batches import chat_lines, create_batch, upload
from app.testing.config import write_config
from app.testing.measure import CpuMeter, rss
from app.testing.postgres import database_server
from app.testing.processes import (
    Gateway,
    Process,
    create_key,
    start_gateway,
    start_mock_upstream,
    start_worker,
)

MODEL = "remote"
GATEWAY_APPS = ("tiergate", "tiergate-listen")  # the gateway's pool and its LISTEN hub
TIERGATE_PARTS = ("workers", "postgres")  # with the gateway(s): what a flex request costs tiergate
WORKER_APPS = ("tiergate-worker", "tiergate-work")  # engine + procrastinate; flex LISTEN
MB = 1024 * 1024
JOB_POOL_SIZE = 4


@dataclass
class LoadConfig:
    """What to run; the defaults are the full benchmark."""

    clients: int = 2000
    lines: int = 10_000
    gateways: int = 1
    workers: int = 2
    worker_concurrency: int = 16
    flex_concurrency: int = 64
    latency_ms: float = 100.0
    deadline_s: float = 180.0
    db_pool_size: int = 4
    db_max_overflow: int = 12
    max_rss_mb: float = 512.0  # each gateway's RSS must stay under this
    baselines: bool = True

    @property
    def connection_bound(self) -> int:
        """One gateway's promise: its pool, its overflow and one LISTEN connection."""
        return self.db_pool_size + self.db_max_overflow + 1

    @property
    def gateways_connection_bound(self) -> int:
        """What all the gateways together may hold."""
        return self.gateways * self.connection_bound

    @property
    def worker_connections(self) -> int:
        """What one worker process may hold: its engine, procrastinate's pool and LISTEN, and
        the flex dispatcher's LISTEN."""
        return min(self.worker_concurrency, 10) + JOB_POOL_SIZE + 1 + 1

    def config_data(self, upstream: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The tiergate config of this run (models, limits), for ``write_config``."""
        models = [
            {"name": MODEL, "upstream": f"{upstream}/v1", "flex_concurrency": self.flex_concurrency}
        ]
        limits = {
            "db_pool_size": self.db_pool_size,
            "db_max_overflow": self.db_max_overflow,
            "worker_concurrency": self.worker_concurrency,
            "job_pool_size": JOB_POOL_SIZE,
            "waiter_recheck_s": 5.0,
            "batch_chunk": 200,
            "batch_jobs": 4,
        }
        return models, limits


# --- sampling -----------------------------------------------------------------------------


@dataclass
class Sample:
    """One look at the processes, ``t`` seconds (perf_counter) in."""

    t: float
    gateway_conns: int = 0  # all gateways'
    gateway_busy: int = 0
    worker_conns: int = 0
    gateway_rss: tuple[int, ...] = ()  # each gateway's
    worker_rss: tuple[int, ...] = ()
    waiting: int | None = None  # tiergate_waiting_clients, summed over the gateways' /metrics
    waiting_each: tuple[int, ...] = ()  # ... and each gateway's
    client_sockets: int | None = None  # this process's ESTABLISHED sockets to the gateways
    metrics_s: float | None = None  # how long the slowest gateway took to answer /metrics


class Poller(threading.Thread):
    """Calls ``probe`` every ``every_s`` seconds in a thread, collecting what it returns."""

    def __init__(self, probe: Callable[[], Sample], every_s: float) -> None:
        super().__init__(daemon=True)
        self.probe = probe
        self.every_s = every_s
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append(self.probe())
            except Exception as exc:  # a probe failing must not end the run; report it
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]


class Probes:
    """The two probes: database + memory (cheap, 0.1 s) and HTTP + sockets (0.25 s)."""

    def __init__(self, db: str, gateways: list[Gateway], worker_pids: list[int]):
        self.db = db
        self.gateways = gateways
        self.gateway_pids = [pid(g.process) for g in gateways]
        self.worker_pids = worker_pids
        self.gateway_ports = {int(g.url.rsplit(":", 1)[1]) for g in gateways}
        self._conn: psycopg.Connection | None = None
        self._http = httpx.Client(timeout=5)

    def database(self) -> Sample:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.db, autocommit=True)
        rows = self._conn.execute(
            "SELECT application_name, state FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        gateway = [state for app, state in rows if app in GATEWAY_APPS]
        return Sample(
            t=time.perf_counter(),
            gateway_conns=len(gateway),
            gateway_busy=sum(1 for state in gateway if state not in ("idle", None)),
            worker_conns=sum(1 for app, _ in rows if app in WORKER_APPS),
            gateway_rss=tuple(rss(p) for p in self.gateway_pids),
            worker_rss=tuple(rss(p) for p in self.worker_pids),
        )

    def http(self) -> Sample:
        each: list[int] = []
        answered = 0.0
        for gateway in self.gateways:
            asked = time.perf_counter()
            text = self._http.get(gateway.url + "/metrics").text
            answered = max(answered, time.perf_counter() - asked)
            for line in text.splitlines():
                if line.startswith("tiergate_waiting_clients "):
                    each.append(int(float(line.split()[1])))
        waiting = sum(each) if each else None
        sockets = sum(
            1
            for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port in self.gateway_ports and c.status == "ESTABLISHED"
        )
        return Sample(
            t=time.perf_counter(),
            waiting=waiting,
            waiting_each=tuple(each) if len(each) == len(self.gateways) else (),
            client_sockets=sockets,
            metrics_s=answered,
        )

    def close(self) -> None:
        self._http.close()
        if self._conn is not None:
            self._conn.close()


@contextlib.contextmanager
def sampling(probes: Probes) -> Iterator[tuple[Poller, Poller]]:
    fast, slow = Poller(probes.database, 0.1), Poller(probes.http, 0.25)
    fast.start()
    slow.start()
    try:
        yield fast, slow
    finally:
        fast.stop()
        slow.stop()
        probes.close()


# --- the flex clients ---------------------------------------------------------------------


@dataclass
class FlexResult:
    """How ``clients`` concurrent blocking flex requests ended."""

    clients: int
    latencies: list[float] = field(default_factory=list)  # seconds, answered 200
    failures: Counter[str] = field(default_factory=Counter)  # status code / error -> count
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def raise_fd_limit(needed: int) -> None:
    """This process holds one socket per client: lift the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def flex_clients(apis: list[str], key: str, clients: int, deadline_s: float) -> FlexResult:
    """``clients`` blocking flex requests at once, one HTTP connection each; client ``i``
    calls ``apis[i % len(apis)]``."""
    raise_fd_limit(clients + 256)
    result = FlexResult(clients=clients)
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=clients + 16, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=deadline_s)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"model": MODEL, "input": f"flex client {i}", "service_tier": "flex"}
        start = time.perf_counter()
        try:
            api = apis[i % len(apis)]
            async with session.post(api + "/responses", json=body, headers=headers) as resp:
                payload = await resp.read()
            if resp.status != 200:
                result.failures[f"HTTP {resp.status}"] += 1
                return
            answer = json.loads(payload)
            if answer.get("status") != "completed" or answer.get("service_tier") != "flex":
                result.failures[f"unexpected body {answer.get('status')}"] += 1
                return
            if f'"echo: {body["input"]}"' not in payload.decode():  # someone else's answer?
                result.failures["an answer to another request"] += 1
                return
            result.latencies.append(time.perf_counter() - start)
        except TimeoutError:
            result.failures[f"no answer within {deadline_s:.0f} s"] += 1
        except aiohttp.ClientError as exc:
            result.failures[type(exc).__name__] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        result.started = time.perf_counter()
        await asyncio.gather(*(one(session, i) for i in range(clients)))
        result.ended = time.perf_counter()
    return result


# --- the batch ----------------------------------------------------------------------------


@dataclass
class BatchResult:
    """A batch from ``create`` to ``completed`` and its verified output."""

    lines: int
    status: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    created: float = 0.0
    running: float = 0.0  # in_progress seen
    ended: float = 0.0  # final status seen
    missing: int = 0  # custom_ids in no output/error file
    doubled: int = 0  # custom_ids in more than one line
    poll_errors: Counter[str] = field(default_factory=Counter)  # polls that got no batch

    @property
    def seconds(self) -> float:
        return self.ended - self.created


async def start_batch(http: httpx.AsyncClient, lines: int) -> tuple[str, BatchResult]:
    """Upload, create and wait until the batch's lines are ``in_progress``."""
    result = BatchResult(lines=lines)
    file_id = await upload(http, chat_lines(lines, MODEL, "req"), "load.jsonl")
    result.created = time.perf_counter()
    batch = await create_batch(http, file_id)
    while batch["status"] == "validating":
        await asyncio.sleep(0.1)
        batch = (await http.get(f"/batches/{batch['id']}")).json()
    result.running = time.perf_counter()
    return batch["id"], result


async def follow_batch(
    https: list[httpx.AsyncClient], batch_id: str, result: BatchResult, deadline_s: float
) -> BatchResult:
    """Poll twice a second, at each gateway in turn, until the batch ends; then check every
    custom_id came back once."""
    deadline = time.perf_counter() + deadline_s
    batch: dict[str, Any] = {"status": "unknown"}
    polls = 0
    while True:
        http = https[polls % len(https)]
        polls += 1
        try:
            polled = await http.get(f"/batches/{batch_id}")
            if polled.status_code == 200:
                batch = polled.json()
            else:
                result.poll_errors[f"HTTP {polled.status_code}"] += 1
        except httpx.HTTPError as exc:
            result.poll_errors[type(exc).__name__] += 1
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        if time.perf_counter() > deadline:
            result.status = f"{batch['status']} after {deadline_s:.0f} s"
            result.ended = time.perf_counter()
            return result
        await asyncio.sleep(0.5)
    result.ended = time.perf_counter()
    result.status, result.counts = batch["status"], batch["request_counts"]
    seen: Counter[str] = Counter()
    for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
        if file_id:
            download = await http.get(f"/files/{file_id}/content")
            if download.status_code != 200:
                result.status += f" (download of {file_id}: HTTP {download.status_code})"
                continue
            seen.update(json.loads(line)["custom_id"] for line in download.content.splitlines())
    result.missing = sum(1 for i in range(result.lines) if f"req-{i}" not in seen)
    result.doubled = sum(1 for n in seen.values() if n > 1)
    return result


# --- phases -------------------------------------------------------------------------------


def db_now(db: str) -> dt.datetime:
    with psycopg.connect(db, autocommit=True) as conn:
        (now,) = conn.execute("SELECT clock_timestamp()").fetchone()
    return now


def sessions_opened(db: str) -> int:
    """Connections ever opened to this database (PostgreSQL 14+ counts them; else 0)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def flex_anatomy(db: str, since: dt.datetime) -> dict[str, float]:
    """Where the flex clients' rows spent their time (seconds): waiting for a worker to claim
    them, then in the worker (a model slot, the upstream call, the write)."""
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY started_at - created_at),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - started_at),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY finished_at - started_at)"
            " FROM requests WHERE custom_id IS NULL AND service_tier = 'flex'"
            " AND created_at >= %s",
            (since,),
        ).fetchone()
    names = ("queued p50", "in worker p50", "in worker p99")
    return {
        name: value.total_seconds() if value else 0.0
        for name, value in zip(names, row, strict=True)
    }


@dataclass
class Phase:
    """One phase: flex clients, a batch, or both at once; with what was sampled meanwhile."""

    name: str
    flex: FlexResult | None = None
    batch: BatchResult | None = None
    samples: list[Sample] = field(default_factory=list)
    http_samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used, by part
    client_lag_s: float = 0.0  # the load generator's worst event-loop lag
    anatomy: dict[str, float] = field(default_factory=dict)  # flex rows: seconds
    gateway_rss_end: tuple[int, ...] = ()  # each gateway's
    sessions: int = 0  # connections opened to the database during the phase (all clients)

    @property
    def slowest_metrics_s(self) -> float:
        return max((s.metrics_s or 0.0 for s in self.http_samples), default=0.0)

    @property
    def peak_gateway_conns(self) -> int:
        return max((s.gateway_conns for s in self.samples), default=0)

    @property
    def peak_gateway_busy(self) -> int:
        return max((s.gateway_busy for s in self.samples), default=0)

    @property
    def peak_worker_conns(self) -> int:
        return max((s.worker_conns for s in self.samples), default=0)

    @property
    def peak_waiting(self) -> int:
        return max((s.waiting or 0 for s in self.http_samples), default=0)

    @property
    def peak_waiting_each(self) -> list[int]:
        """Each gateway's peak of clients waiting at once."""
        rows = [s.waiting_each for s in self.http_samples if s.waiting_each]
        return [max(column) for column in zip(*rows, strict=True)] if rows else []

    @property
    def peak_client_sockets(self) -> int:
        return max((s.client_sockets or 0 for s in self.http_samples), default=0)

    @property
    def peak_gateway_rss(self) -> int:
        """The largest RSS any gateway reached."""
        return max((max(s.gateway_rss, default=0) for s in self.samples), default=0)

    @property
    def peak_gateways_rss(self) -> list[int]:
        """Each gateway's peak RSS."""
        rows = [s.gateway_rss for s in self.samples if s.gateway_rss]
        return [max(column) for column in zip(*rows, strict=True)] if rows else []

    @property
    def peak_worker_rss(self) -> list[int]:
        rows = [s.worker_rss for s in self.samples if s.worker_rss]
        return [max(column) for column in zip(*rows, strict=True)] if rows else []


async def loop_lag(worst: list[float]) -> None:
    """Until cancelled: how late this process's event loop wakes from 50 ms sleeps (its worst)."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(0.05)
        worst[0] = max(worst[0], time.perf_counter() - asked - 0.05)


async def run_phase(
    gateways: list[Gateway], key: str, cfg: LoadConfig, *, flex: bool, batch: bool
) -> tuple[FlexResult | None, BatchResult | None, float]:
    """Optionally start a batch (at the first gateway); once it runs, optionally open the flex
    clients (spread over the gateways). Also returns the client's worst event-loop lag
    (seconds)."""
    headers = {"Authorization": f"Bearer {key}"}
    worst = [0.0]
    lag = asyncio.create_task(loop_lag(worst))
    # A fresh connection per call: when this busy process polls late, it must not reuse a
    # connection the gateway is just closing as idle (uvicorn's keep-alive is 5 s).
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with contextlib.AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=g.api, headers=headers, timeout=120, limits=fresh)
            )
            for g in gateways
        ]
        following: asyncio.Task[BatchResult] | None = None
        if batch:
            batch_id, started = await start_batch(https[0], cfg.lines)
            following = asyncio.create_task(follow_batch(https, batch_id, started, cfg.deadline_s))
        flex_result = None
        if flex:
            apis = [g.api for g in gateways]
            flex_result = await flex_clients(apis, key, cfg.clients, cfg.deadline_s)
        batch_result = await following if following is not None else None
    lag.cancel()
    return flex_result, batch_result, worst[0]


# --- the whole run ------------------------------------------------------------------------


@dataclass
class LoadReport:
    """Everything measured in one run."""

    config: LoadConfig
    topology: str
    phases: dict[str, Phase]
    gateway_rss_before: tuple[int, ...]  # each gateway's
    sampler_errors: list[str]
    fast_samples: int
    all_samples: list[Sample]

    @property
    def combined(self) -> Phase:
        return self.phases["flex + batch"]

    @property
    def peak_gateway_conns(self) -> int:
        """All gateways' connections at once, at their peak."""
        return max((s.gateway_conns for s in self.all_samples), default=0)

    @property
    def peak_gateway_rss(self) -> int:
        """The largest RSS any gateway reached."""
        return max((max(s.gateway_rss, default=0) for s in self.all_samples), default=0)


def pid(process: Process) -> int:
    assert process.proc is not None
    return process.proc.pid


def wait_for_workers(db: str, n: int, timeout_s: float = 60.0) -> None:
    """Poll until ``n`` procrastinate workers have registered."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(db, autocommit=True) as conn:
        while time.monotonic() < deadline:
            (count,) = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
            if count >= n:
                return
            time.sleep(0.1)
    raise RuntimeError(f"{n} worker(s) did not register within {timeout_s:.0f} s")


def run_load(
    database: DatabaseURL, work: Path, cfg: LoadConfig, log: Callable[[str], None] = print
) -> LoadReport:
    """Start the processes on ``database`` (a fresh, migrated one), run the phases, stop all."""
    db = database.libpq()
    processes: list[Process] = []
    try:
        upstream, mock = start_mock_upstream(work / "mock.log", latency_ms=cfg.latency_ms)
        processes.append(mock)
        config = write_config(work / "tiergate.yaml", *cfg.config_data(upstream))
        key = create_key(db, "load")
        gateways = []
        for n in range(cfg.gateways):  # gw.log for the first: the one-gateway run's name
            log_name = "gw.log" if n == 0 else f"gw{n}.log"
            gateway = start_gateway(
                database_url=db, config=config, log=work / log_name, worker=False
            )
            processes.append(gateway.process)
            gateways.append(gateway)
        workers = [
            start_worker(
                database_url=db,
                config=config,
                log=work / f"worker{i}.log",
                concurrency=cfg.worker_concurrency,
            )
            for i in range(cfg.workers)
        ]
        processes += workers
        wait_for_workers(db, cfg.workers)
        # No warm-up: the first burst meets a cold gateway (key cache, pool), as after a restart.
        gateway_pids = [pid(g.process) for g in gateways]
        probes = Probes(db, gateways, [pid(w) for w in workers])
        meter = CpuMeter(
            db,
            {
                gateway_part(cfg): gateway_pids,
                "workers": [pid(w) for w in workers],
                "mock": [pid(mock)],
            },
        )
        rss_before = tuple(rss(p) for p in gateway_pids)
        plan = [("flex + batch", True, True)]
        if cfg.baselines:
            plan = [("flex alone", True, False), ("batch alone", False, True), *plan]
        phases: dict[str, Phase] = {}
        with sampling(probes) as (fast, slow):
            for name, flex, batch in plan:
                log(f"phase: {name}")
                start, cpu_start, since = time.perf_counter(), meter.read(), db_now(db)
                opened = sessions_opened(db)
                flex_result, batch_result, lag = asyncio.run(
                    run_phase(gateways, key, cfg, flex=flex, batch=batch)
                )
                end, cpu_end = time.perf_counter(), meter.read()
                phases[name] = Phase(
                    name,
                    flex_result,
                    batch_result,
                    fast.between(start, end),
                    slow.between(start, end),
                    end - start,
                    {part: cpu_end[part] - cpu_start[part] for part in cpu_end},
                    lag,
                    flex_anatomy(db, since) if flex else {},
                    tuple(rss(p) for p in gateway_pids),
                    sessions_opened(db) - opened - 2,  # less this loop's own two
                )
        gateways_text = "gateway" if cfg.gateways == 1 else f"{cfg.gateways} x gateway"
        topology = (
            f"{gateways_text} `tiergate serve --no-worker` + {cfg.workers} x "
            f"`tiergate worker --concurrency {cfg.worker_concurrency}`, "
            f"model flex_concurrency {cfg.flex_concurrency}, mock upstream at "
            f"{cfg.latency_ms:.0f} ms"
        )
        return LoadReport(
            config=cfg,
            topology=topology,
            phases=phases,
            gateway_rss_before=rss_before,
            sampler_errors=fast.errors + slow.errors,
            fast_samples=len(fast.samples),
            all_samples=fast.samples,
        )
    finally:
        for process in reversed(processes):
            process.stop()


def problems(report: LoadReport) -> list[str]:
    """The promises that were broken (empty when all held)."""
    cfg = report.config
    found = []
    for phase in report.phases.values():
        if phase.flex is not None and (phase.flex.failed or phase.flex.ok != cfg.clients):
            found.append(
                f"{phase.name}: {phase.flex.ok}/{cfg.clients} clients answered; "
                f"failures {dict(phase.flex.failures)}"
            )
        batch = phase.batch
        if batch is not None:
            completed = batch.counts.get("completed")
            if batch.status != "completed" or completed != cfg.lines:
                found.append(f"{phase.name}: batch {batch.status}, counts {batch.counts}")
            if batch.poll_errors:
                found.append(f"{phase.name}: batch polls failed: {dict(batch.poll_errors)}")
            if batch.missing or batch.doubled:
                found.append(
                    f"{phase.name}: {batch.missing} custom_ids missing, {batch.doubled} doubled"
                )
    if report.peak_gateway_conns > cfg.gateways_connection_bound:
        found.append(
            f"{plural(cfg.gateways)} held {report.peak_gateway_conns} PostgreSQL connections "
            f"(bound {cfg.gateways_connection_bound})"
        )
    peak_workers = max((s.worker_conns for s in report.all_samples), default=0)
    if peak_workers > cfg.workers * cfg.worker_connections:
        found.append(
            f"the {cfg.workers} workers held {peak_workers} PostgreSQL connections "
            f"(bound {cfg.workers} x {cfg.worker_connections})"
        )
    if report.fast_samples < 10:
        found.append(f"only {report.fast_samples} connection samples were taken")
    if report.peak_gateway_rss > cfg.max_rss_mb * MB:
        found.append(
            f"a gateway's RSS peaked at {report.peak_gateway_rss / MB:.0f} MB "
            f"(limit {cfg.max_rss_mb:.0f} MB)"
        )
    return found


# --- printing -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def mb(n: float) -> str:
    return f"{n / MB:.0f} MB"


def mbs(values: tuple[int, ...] | list[int]) -> str:
    return ", ".join(mb(v) for v in values)


def gateway_part(cfg: LoadConfig) -> str:
    """The gateways' name in the CPU figures: ``gateway``, or ``gateways`` (their sum)."""
    return "gateway" if cfg.gateways == 1 else "gateways"


def tiergate_parts(cfg: LoadConfig) -> tuple[str, ...]:
    """The parts whose CPU is tiergate's own (not the mock's, not the load generator's)."""
    return (gateway_part(cfg), *TIERGATE_PARTS)


def plural(n: int) -> str:
    return "the gateway" if n == 1 else f"the {n} gateways"


def drain_rate(flex: FlexResult) -> float:
    return flex.clients / max(flex.ended - flex.started, 1e-9)


def cpu_per_request_ms(phase: Phase, cfg: LoadConfig) -> float:
    """CPU milliseconds in tiergate's processes per flex client (a flex-only phase)."""
    assert phase.flex is not None
    ours = sum(phase.cpu.get(part, 0.0) for part in tiergate_parts(cfg))
    return 1000 * ours / max(phase.flex.clients, 1)


def phase_lines(phase: Phase, report: LoadReport) -> list[str]:
    """The figures of one phase, one topic a line."""
    cfg = report.config
    out = [phase.name]
    where = gateway_part(cfg)
    flex, batch = phase.flex, phase.batch
    if flex is not None:
        lat = flex.latencies
        failed = ", ".join(f"{n} x {why}" for why, n in flex.failures.most_common()) or "none"
        slowest = max(lat, default=0.0)
        out += [
            f"  flex clients  {flex.ok}/{flex.clients} answered 200, failed: {failed}; latency "
            f"p50 {pct(lat, 0.5):.1f} s, p99 {pct(lat, 0.99):.1f} s, max {slowest:.1f} s"
            f" (all answered within {flex.ended - flex.started:.1f} s)",
            "  flex rows     "
            + ", ".join(f"{name} {value:.2f} s" for name, value in phase.anatomy.items()),
            f"  concurrency   {phase.peak_client_sockets} sockets open to the {where} at once "
            f"(client side); peak {phase.peak_waiting} clients waiting at once in the {where}"
            + (
                f" (each: {', '.join(map(str, phase.peak_waiting_each))})"
                if cfg.gateways > 1
                else ""
            ),
            f"  drain         {drain_rate(flex):.0f} requests/s"
            " (clients / first submit to last answer)",
        ]
        if batch is None and flex.clients:
            every = sum(phase.cpu.values())
            out.append(
                f"  CPU/request   {cpu_per_request_ms(phase, cfg):.1f} ms in tiergate's processes "
                f"({' + '.join(tiergate_parts(cfg))}), {1000 * every / flex.clients:.1f} ms with "
                "the mock and the load generator"
            )
    if batch is not None:
        tail = ""
        if flex is not None:
            tail = f"; it ended {batch.ended - flex.ended:+.1f} s after the last flex answer"
        out.append(
            f"  batch         {batch.lines} lines {batch.status} in {batch.seconds:.1f} s from "
            f"create ({batch.lines / batch.seconds:.0f} lines/s); {batch.missing} custom_ids "
            f"missing, {batch.doubled} doubled{tail}"
        )
    bound = str(cfg.connection_bound)
    if cfg.gateways > 1:
        bound = f"{cfg.gateways} x {cfg.connection_bound}"
    out += [
        f"  connections   {where} peak {phase.peak_gateway_conns} (busy {phase.peak_gateway_busy})"
        f" <= bound {bound}; workers peak {phase.peak_worker_conns} (bound "
        f"{cfg.workers} x {cfg.worker_connections}); {phase.sessions} connections opened in "
        "the phase, all processes",
        f"  memory        {where}' RSS peak {mbs(phase.peak_gateways_rss)}, at the end "
        f"{mbs(phase.gateway_rss_end)}; workers' RSS peak {mbs(phase.peak_worker_rss)}"
        if cfg.gateways > 1
        else f"  memory        gateway RSS peak {mb(phase.peak_gateway_rss)}, at the end "
        f"{mbs(phase.gateway_rss_end)}; workers' RSS peak {mbs(phase.peak_worker_rss)}",
    ]
    total = sum(phase.cpu.values())
    cores = os.cpu_count() or 1
    share = total / (cores * phase.seconds)
    out += [
        "  CPU seconds   "
        + ", ".join(f"{part} {seconds:.1f}" for part, seconds in phase.cpu.items())
        + f" = {total:.0f} of {cores} x {phase.seconds:.0f} s ({share:.0%})",
        f"  lag           /metrics answered within {phase.slowest_metrics_s:.2f} s; the load "
        f"generator's event loop lagged up to {phase.client_lag_s:.2f} s",
    ]
    return out


def render(report: LoadReport) -> str:
    cfg = report.config
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    owner = "gateway" if cfg.gateways == 1 else "gateways'"
    out = [
        f"tiergate load bench ({when}, {os.cpu_count()} cores): {cfg.clients} blocking flex "
        f"clients during a {cfg.lines}-line batch",
        f"topology: {report.topology}",
        f"promises: gateway connections <= db_pool_size {cfg.db_pool_size} + db_max_overflow "
        f"{cfg.db_max_overflow} + 1 LISTEN = {cfg.connection_bound}"
        + (
            f" each, {cfg.gateways_connection_bound} for the {cfg.gateways} gateways together "
            "(checked on their sum: they share one application_name)"
            if cfg.gateways > 1
            else ""
        )
        + f"; gateway RSS <= {cfg.max_rss_mb:.0f} MB; every client answered within "
        f"{cfg.deadline_s:.0f} s",
        f"gateway RSS before the first phase {mbs(report.gateway_rss_before)}, peak "
        f"{mb(report.peak_gateway_rss)}; {owner} connections peak "
        f"{report.peak_gateway_conns} ({report.fast_samples} samples, every 0.1 s)",
    ]
    for phase in report.phases.values():
        out += phase_lines(phase, report)
    both = report.combined
    alone_flex = report.phases.get("flex alone")
    alone_batch = report.phases.get("batch alone")
    ratios = []
    if alone_flex and alone_flex.flex and both.flex:
        a, b = alone_flex.flex.latencies, both.flex.latencies
        p50, p99 = pct(b, 0.5) / pct(a, 0.5), pct(b, 0.99) / pct(a, 0.99)
        ratios.append(f"flex latency p50 x{p50:.2f}, p99 x{p99:.2f}")
    if alone_batch and alone_batch.batch and both.batch:
        ratios.append(f"batch time x{both.batch.seconds / alone_batch.batch.seconds:.2f}")
    if ratios:
        out.append("both at once / alone: " + "; ".join(ratios))
    if report.sampler_errors:
        errors = report.sampler_errors
        out.append(f"sampler errors: {len(errors)}, e.g. {errors[0]}")
    return "\n".join(out)


def comparison(base: LoadReport, other: LoadReport) -> list[str]:
    """The second topology's figures against the first's (other / base), phase by phase."""

    def ratio(a: float, b: float) -> str:
        return f"{b:.2f} / {a:.2f} = x{b / a:.2f}" if a else f"{b:.2f} / {a:.2f}"

    out = [f"{other.topology}\n  versus {base.topology} (this / that):"]
    for name, phase in other.phases.items():
        before = base.phases.get(name)
        if before is None:
            continue
        figures = []
        if phase.flex is not None and before.flex is not None:
            a, b = before.flex.latencies, phase.flex.latencies
            figures += [
                f"drain req/s {ratio(drain_rate(before.flex), drain_rate(phase.flex))}",
                f"flex p50 s {ratio(pct(a, 0.5), pct(b, 0.5))}",
                f"flex p99 s {ratio(pct(a, 0.99), pct(b, 0.99))}",
            ]
            if phase.batch is None:
                figures.append(
                    "CPU/request ms "
                    + ratio(
                        cpu_per_request_ms(before, base.config),
                        cpu_per_request_ms(phase, other.config),
                    )
                )
        if phase.batch is not None and before.batch is not None:
            figures.append(f"batch s {ratio(before.batch.seconds, phase.batch.seconds)}")
        out.append(f"  {name}: " + "; ".join(figures))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = LoadConfig()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--lines", type=int, default=defaults.lines)
    parser.add_argument("--gateways", type=int, default=defaults.gateways)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--worker-concurrency", type=int, default=defaults.worker_concurrency)
    parser.add_argument("--flex-concurrency", type=int, default=defaults.flex_concurrency)
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s)
    parser.add_argument("--db-pool-size", type=int, default=defaults.db_pool_size)
    parser.add_argument("--db-max-overflow", type=int, default=defaults.db_max_overflow)
    parser.add_argument("--max-rss-mb", type=float, default=defaults.max_rss_mb)
    parser.add_argument("--no-baselines", action="store_true", help="only the combined phase")
    parser.add_argument("--quick", action="store_true", help="200 clients, 1,000 lines")
    parser.add_argument(
        "--compare-default",
        action="store_true",
        help="first run the default topology (1 gateway, 2 workers), then print the ratios",
    )
    args = parser.parse_args()
    cfg = LoadConfig(
        clients=200 if args.quick else args.clients,
        lines=1000 if args.quick else args.lines,
        gateways=args.gateways,
        workers=args.workers,
        worker_concurrency=args.worker_concurrency,
        flex_concurrency=args.flex_concurrency,
        latency_ms=args.latency_ms,
        deadline_s=args.deadline,
        db_pool_size=args.db_pool_size,
        db_max_overflow=args.db_max_overflow,
        max_rss_mb=args.max_rss_mb,
        baselines=not args.no_baselines,
    )
    configs = [cfg]
    if args.compare_default:
        configs.insert(
            0, dataclasses.replace(cfg, gateways=defaults.gateways, workers=defaults.workers)
        )
    work = Path(tempfile.mkdtemp(prefix="tiergate-load-"))
    reports: list[LoadReport] = []
    broken: list[str] = []
    with database_server(work / "home") as factory:
        for n, each in enumerate(configs):  # each topology on a database of its own
            run_dir = work if len(configs) == 1 else work / f"topology-{n}"
            report = run_load(
                factory.create(), run_dir, each, log=lambda m: print(m, file=sys.stderr)
            )
            reports.append(report)
            print(render(report), flush=True)
            broken += problems(report)
    if len(reports) > 1:
        print("\n".join(comparison(reports[0], reports[-1])))
    for problem in broken:
        print(f"FAILED: {problem}")
    if broken:
        print(f"logs: {work}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
