"""tiergate behind PgBouncer in transaction mode, with ``DATABASE_DIRECT_URL`` for sessions.

PgBouncer (pool_mode = transaction, ``POOL`` server connections) runs as its own process in
front of the test's PostgreSQL. A gateway (``--no-worker``) and a separate ``tiergate
worker`` get PgBouncer's address as ``DATABASE_URL`` and PostgreSQL's own as
``DATABASE_DIRECT_URL``: their statements share the few server connections, and their LISTEN
connections (gateway, flex dispatcher, procrastinate) go directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.pgbouncer import PgBouncer, pgbouncer_binary, run_pgbouncer
from app.testing.processes import Gateway, Process, create_key, start_gateway
from app.testing.processes import start_worker as start_worker_process
from tests.support.batches import chat_line, start_batch
from tests.support.connections import CLIENTS, connections_by_app
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(
    pgbouncer_binary() is None,
    reason="the pgbouncer binary is not installed (apt-get install pgbouncer; .ci/run does)",
)

TIMEOUT_S = 30.0
# The safety nets (the waiters' re-check, the workers' poll) are set far beyond the time a
# call may take here: an answer within NOTIFIED_S came by LISTEN/NOTIFY.
SAFETY_NET_S = 60.0
NOTIFIED_S = 10.0
POOL = 3  # PgBouncer's server connections: fewer than the processes' clients below
LIMITS = {
    "db_pool_size": 4,
    "db_max_overflow": 4,
    "job_pool_size": 3,
    "waiter_recheck_s": SAFETY_NET_S,
    "flex_poll_s": SAFETY_NET_S,
    "maintenance_every_s": 1,
    "batch_chunk": 2,
}
WORKER_CONCURRENCY = 8
CONCURRENT = 12  # clients at once in the load tests
BATCHES, LINES = 3, 12
# The LISTEN connections, on DATABASE_DIRECT_URL: the gateway's, the worker's flex
# dispatcher's and procrastinate's.
DIRECT = 3


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [{"name": "remote", "upstream": f"{mock_upstream}/v1", "flex_concurrency": 8}],
        LIMITS,
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def bouncer(database: DatabaseURL, logs: Path) -> Iterator[PgBouncer]:
    with run_pgbouncer(
        database, logs / "pgbouncer", pool_mode="transaction", pool_size=POOL, max_client_conn=100
    ) as running:
        yield running


@pytest.fixture(scope="module")
def bounced(bouncer: PgBouncer, database: DatabaseURL) -> str:
    """The test database's address through PgBouncer in transaction mode."""
    return bouncer.url(database).libpq()


@pytest.fixture(scope="module")
def direct(database: DatabaseURL) -> dict[str, str]:
    return {"DATABASE_DIRECT_URL": database.libpq()}


@pytest.fixture(scope="module")
def gateway(bounced: str, direct: dict[str, str], config: Path, logs: Path) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=bounced, env=direct, config=config, log=logs / "gw.log", worker=False
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def worker(
    bounced: str, direct: dict[str, str], config: Path, logs: Path, db: psycopg.Connection
) -> Iterator[Process]:
    process = start_worker_process(
        database_url=bounced,
        env=direct,
        config=config,
        log=logs / "worker.log",
        concurrency=WORKER_CONCURRENCY,
    )
    wait_until(lambda: "tiergate-work" in connections_by_app(db), "the worker's flex LISTEN")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway, bounced: str) -> openai.OpenAI:
    key = create_key(bounced, "through-transaction-mode")  # tiergate keys, through PgBouncer
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=60)


class PeakConnections:
    """The most PostgreSQL connections to the test database seen at once while it runs
    (sampled every 20 ms on its own connection; the test's ``db`` connection is one of them,
    hence the ``+ 1`` in the bounds)."""

    def __init__(self, database: DatabaseURL) -> None:
        self.database = database
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _sample(self) -> None:
        with psycopg.connect(self.database.libpq(), autocommit=True) as conn:
            while not self._stop.wait(0.02):
                by_app = connections_by_app(conn)
                if sum(by_app.values()) > self.peak:
                    self.peak, self.at_peak = sum(by_app.values()), by_app


def test_flex_calls_at_once_are_answered_by_notify_through_few_server_connections(
    client: openai.OpenAI, worker: Process, database: DatabaseURL
) -> None:
    def call(n: int) -> float:
        started = time.monotonic()
        answer = client.responses.create(model="remote", input=f"pooled {n}", service_tier="flex")
        Response.model_validate(answer.model_dump())
        assert answer.status == "completed" and answer.service_tier == "flex"
        assert answer.output_text == f"echo: pooled {n}"
        return time.monotonic() - started

    with PeakConnections(database) as seen, ThreadPoolExecutor(CONCURRENT) as pool:
        took = list(pool.map(call, range(3 * CONCURRENT)))
    # The worker was woken by tiergate_work, the gateway by tiergate_done (NOTIFYs sent
    # through PgBouncer, received on the direct LISTEN connections): neither safety net
    # (SAFETY_NET_S) could have answered this soon.
    assert max(took) < NOTIFIED_S, took
    assert 0 < seen.peak <= POOL + DIRECT + 1, seen.at_peak


def test_realtime_calls_at_once_share_the_server_connections(
    client: openai.OpenAI, gateway: Gateway, database: DatabaseURL
) -> None:
    def call(n: int) -> None:
        answer = client.chat.completions.create(
            model="remote", messages=[{"role": "user", "content": f"now {n}"}]
        )
        ChatCompletion.model_validate(answer.model_dump())
        assert answer.choices[0].message.content == f"echo: now {n}"

    with PeakConnections(database) as seen, ThreadPoolExecutor(CONCURRENT) as pool:
        list(pool.map(call, range(5 * CONCURRENT)))
    assert 0 < seen.peak <= POOL + DIRECT + 1, seen.at_peak


def test_a_background_call_is_polled_to_completion(client: openai.OpenAI, worker: Process) -> None:
    queued = client.responses.create(
        model="remote", input="pooled later", background=True, service_tier="flex"
    )
    Response.model_validate(queued.model_dump())
    assert queued.status in ("queued", "in_progress")
    done = wait_until(
        lambda: (r := client.responses.retrieve(queued.id)).status == "completed" and r,
        "the background call to complete",
        timeout=TIMEOUT_S,
    )
    Response.model_validate(done.model_dump())
    assert done.id == queued.id and done.output_text == "echo: pooled later"


def test_batches_run_on_procrastinate_through_transaction_mode(
    client: openai.OpenAI, worker: Process, database: DatabaseURL
) -> None:
    # BATCHES * (validation + LINES / batch_chunk runs + finalization) = 24 procrastinate
    # jobs on its pool of 3: each of its queries runs more than 5 times on a connection,
    # where psycopg would prepare it by default.
    lines = [chat_line(f"line-{i}", f"pooled line {i}") for i in range(LINES)]
    with PeakConnections(database) as seen:
        ids = [start_batch(client, lines).id for _ in range(BATCHES)]
        done = [completed(client, batch_id) for batch_id in ids]
    for batch in done:
        Batch.model_validate(batch.model_dump())
        assert batch.request_counts is not None and batch.request_counts.completed == LINES
        assert batch.output_file_id is not None
        output = client.files.content(batch.output_file_id).text.splitlines()
        assert len(set(output)) == len(output) == LINES
    assert 0 < seen.peak <= POOL + DIRECT + 1, seen.at_peak


def completed(client: openai.OpenAI, batch_id: str) -> Batch:
    return wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status == "completed" and b,
        "the batch to complete",
        timeout=TIMEOUT_S,
    )


def test_connections_are_shared_and_the_listens_are_direct(
    gateway: Gateway,
    worker: Process,
    bouncer: PgBouncer,
    database: DatabaseURL,
    db: psycopg.Connection,
) -> None:
    mine = database.database
    pooled = {s["remote_pid"] for s in bouncer.show(database, "SERVERS") if s["database"] == mine}
    assert 0 < len(pooled) <= POOL, pooled
    rows = db.execute(
        f"SELECT pid, application_name FROM pg_stat_activity WHERE {CLIENTS}"
    ).fetchall()
    direct = sorted(app for pid, app in rows if pid not in pooled)
    # Every connection that is not PgBouncer's is a LISTEN (the start-up check closed its
    # two 'tiergate-probe' ones): the gateway's, the flex dispatcher's, procrastinate's.
    assert direct == ["tiergate-listen", "tiergate-work", "tiergate-worker"], rows
    (pool,) = [p for p in bouncer.show(database, "POOLS") if p["database"] == mine]
    servers = sum(pool[k] for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
    clients = pool["cl_active"] + pool["cl_waiting"]
    assert 0 < servers <= POOL, pool
    # The processes' pools keep more client connections open than PgBouncer has servers.
    assert clients > POOL, pool


def test_no_statement_failed_in_the_logs(
    gateway: Gateway, worker: Process, client: openai.OpenAI
) -> None:
    """Every test above ran: nothing in either process failed on a prepared statement or a
    lost session (the errors transaction mode gives asyncpg's and psycopg's defaults)."""
    for process in (gateway.process, worker):
        log = process.log.read_text()
        assert "prepared statement" not in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert "restarting in" not in log, log[-3000:]  # procrastinate's worker failed
