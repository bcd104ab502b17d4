"""Two gateways and three workers on one database: nothing lives in one process only.

A flex call accepted and waited on at gateway A is read by id at gateway B; a key revoked
is refused by every gateway at once; the work spreads over the workers; a worker SIGKILLed
with flex requests and batch lines in flight loses none of them; every process keeps the
PostgreSQL connections it documents.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import (
    Gateway,
    Process,
    base_env,
    create_key,
    start_gateway,
    start_worker,
)
from tests.e2e.conftest import row
from tests.support.batches import chat_line, start_batch
from tests.support.connections import connections_by_app
from tests.support.waiting import wait_until

TIMEOUT_S = 60.0
WORKERS = 3
LINES = 300
# A gateway's pool (db_pool_size + db_max_overflow) and its LISTEN connection; a worker's
# engine (min(concurrency, 10)), procrastinate's pool and LISTEN, the flex dispatcher's LISTEN.
GATEWAY_LIMITS = {"db_pool_size": 2, "db_max_overflow": 2}
WORKER_CONCURRENCY = 4
JOB_POOL_SIZE = 2


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [{"name": "remote", "upstream": f"{mock_upstream}/v1", "flex_concurrency": 8}],
        {
            **GATEWAY_LIMITS,
            "job_pool_size": JOB_POOL_SIZE,
            "heartbeat_s": 0.5,
            "stalled_after_s": 2,
            "maintenance_every_s": 1,
            "batch_chunk": 20,
            "max_batch_lines": LINES,
        },
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def gateways(database: DatabaseURL, config: Path, logs: Path) -> Iterator[list[Gateway]]:
    started = [
        start_gateway(
            database_url=database.libpq(), config=config, log=logs / f"gw-{n}.log", worker=False
        )
        for n in "ab"
    ]
    yield started
    for gateway in started:
        gateway.process.stop()


@pytest.fixture(scope="module")
def workers(database: DatabaseURL, config: Path, logs: Path) -> Iterator[list[Process]]:
    started = [
        start_worker(
            database_url=database.libpq(),
            config=config,
            log=logs / f"worker-{n}.log",
            concurrency=WORKER_CONCURRENCY,
        )
        for n in range(WORKERS)
    ]
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def clients(gateways: list[Gateway], key: str) -> list[openai.OpenAI]:
    return [
        openai.OpenAI(base_url=g.api, api_key=key, max_retries=0, timeout=TIMEOUT_S)
        for g in gateways
    ]


def worker_ids(db: psycopg.Connection) -> set[str]:
    rows = db.execute("SELECT id FROM processes WHERE kind = 'worker'").fetchall()
    return {r[0] for r in rows}


def test_accepted_at_a_waited_at_a_read_at_b(
    clients: list[openai.OpenAI], workers: list[Process], db: psycopg.Connection
):
    a, b = clients
    wait_until(lambda: len(worker_ids(db)) == WORKERS, "the workers to register")
    answered = a.responses.create(model="remote", input="from a", service_tier="flex")
    Response.model_validate(answered.model_dump())
    assert answered.output_text == "echo: from a" and answered.service_tier == "flex"
    fetched = b.responses.retrieve(answered.id)
    Response.model_validate(fetched.model_dump())
    assert fetched.status == "completed" and fetched.output_text == "echo: from a"
    assert row(db, answered.id)["claimed_by"] in worker_ids(db)


def test_work_spreads_over_the_workers(
    clients: list[openai.OpenAI], workers: list[Process], db: psycopg.Connection
):
    results: list[Response | BaseException] = []

    def call(n: int) -> None:
        try:
            client = clients[n % 2]
            results.append(
                client.responses.create(
                    model="remote", input=f"mock:sleep_ms=200 n{n}", service_tier="flex"
                )
            )
        except BaseException as exc:  # collected, asserted below
            results.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    answers = [r for r in results if isinstance(r, Response)]
    assert len(answers) == 60, [r for r in results if not isinstance(r, Response)]
    expected = sorted(f"echo: mock:sleep_ms=200 n{n}" for n in range(60))
    assert sorted(r.output_text for r in answers) == expected
    claimed_by = {row(db, r.id)["claimed_by"] for r in answers}
    assert len(claimed_by) >= 2, claimed_by  # 60 calls of 200 ms, 8 slots a worker


def test_a_revoked_key_is_refused_by_every_gateway_at_once(
    gateways: list[Gateway], database: DatabaseURL
):
    secret = create_key(database.libpq(), "short-lived")
    users = [openai.OpenAI(base_url=g.api, api_key=secret, max_retries=0) for g in gateways]
    for user in users:  # both gateways know (and cache) the key
        assert "remote" in [m.id for m in user.models.list()]
    subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", "short-lived"],
        env=base_env(DATABASE_URL=database.libpq()),
        check=True,
        capture_output=True,
        timeout=60,
    )
    for user in users:

        def refused(client: openai.OpenAI = user) -> bool:
            try:
                client.models.list()
            except openai.AuthenticationError:
                return True
            return False

        wait_until(refused, "the revoked key to be refused", timeout=2.0)


def test_a_worker_killed_mid_flight_loses_nothing(
    clients: list[openai.OpenAI],
    workers: list[Process],
    gateways: list[Gateway],
    key: str,
    db: psycopg.Connection,
):
    a, b = clients
    batch_id = start_batch(
        a, [chat_line(f"line-{i}", f"mock:sleep_ms=50 {i}", model="remote") for i in range(LINES)]
    ).id
    background = [
        b.responses.create(
            model="remote", input=f"mock:sleep_ms=1500 bg{i}", background=True, service_tier="flex"
        ).id
        for i in range(30)  # more than two workers' slots: every worker gets some
    ]
    victim = workers[0]
    assert victim.proc is not None
    wait_until(
        lambda: (
            db.execute(
                "SELECT count(*) FROM requests r JOIN processes p ON p.id = r.claimed_by"
                " WHERE r.status = 'in_progress' AND p.pid = %s",
                (victim.proc.pid,),
            ).fetchone()[0]
            > 0
        ),
        "the victim to be running flex requests",
    )
    victim.kill()
    wait_until(
        lambda: a.batches.retrieve(batch_id).status == "completed",
        "the batch to complete",
        timeout=120,
    )
    batch = a.batches.retrieve(batch_id)
    assert batch.request_counts is not None and batch.request_counts.completed == LINES
    assert batch.output_file_id is not None
    lines = b.files.content(batch.output_file_id).text.splitlines()
    assert len(lines) == LINES
    for rid in background:
        done = wait_until(
            lambda rid=rid: (r := a.responses.retrieve(rid)).status == "completed" and r,
            "a background request of the dead worker",
            timeout=TIMEOUT_S,
        )
        assert done.output_text.startswith("echo: ")
    stuck = db.execute(
        "SELECT count(*) FROM requests WHERE status = 'in_progress' AND claimed_by IS NOT NULL"
    ).fetchone()[0]
    assert stuck == 0
    workers[0] = start_worker(  # the module's other tests keep three workers
        database_url=victim.env["DATABASE_URL"],
        config=Path(victim.env["TIERGATE_CONFIG"]),
        log=victim.log,
        concurrency=WORKER_CONCURRENCY,
    )


def test_every_process_keeps_its_connection_bound(
    gateways: list[Gateway], workers: list[Process], db: psycopg.Connection
):
    # The worker restarted by the test above connects its flex LISTEN as it starts.
    by_app = wait_until(
        lambda: (found := connections_by_app(db)).get("tiergate-work") == WORKERS and found,
        "one flex LISTEN connection per worker",
    )
    gateway_bound = GATEWAY_LIMITS["db_pool_size"] + GATEWAY_LIMITS["db_max_overflow"]
    assert by_app.get("tiergate", 0) <= len(gateways) * gateway_bound, by_app
    assert by_app.get("tiergate-listen", 0) == len(gateways), by_app
    worker_bound = min(WORKER_CONCURRENCY, 10) + JOB_POOL_SIZE + 1
    assert by_app.get("tiergate-worker", 0) <= WORKERS * worker_bound, by_app
