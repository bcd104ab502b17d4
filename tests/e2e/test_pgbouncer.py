"""tiergate behind PgBouncer: session pool mode works, transaction pool mode without
``DATABASE_DIRECT_URL`` is refused (with it, see ``test_pgbouncer_transaction.py``).

PgBouncer runs as its own process on a loopback port in front of the test's PostgreSQL, and
a gateway (``--no-worker``) and a separate ``tiergate worker`` get only PgBouncer's address
as ``DATABASE_URL``. In session mode every LISTEN keeps its server connection, so flex
answers arrive by NOTIFY; in transaction mode notifications never reach the LISTEN
connection and asyncpg's prepared statements collide, so tiergate refuses to start unless
``DATABASE_DIRECT_URL`` gives it a session address.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.pgbouncer import PgBouncer, pgbouncer_binary, run_pgbouncer
from app.testing.processes import Gateway, Process, base_env, create_key, start_gateway
from app.testing.processes import start_worker as start_worker_process
from tests.support.batches import chat_line, start_batch
from tests.support.connections import connections_by_app
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(
    pgbouncer_binary() is None,
    reason="the pgbouncer binary is not installed (apt-get install pgbouncer; .ci/run does)",
)

TIMEOUT_S = 30.0
# The safety nets (the waiters' re-check, the workers' poll) are set far beyond the time a
# call may take here: an answer within NOTIFIED_S came by LISTEN/NOTIFY through PgBouncer.
SAFETY_NET_S = 60.0
NOTIFIED_S = 10.0
LIMITS = {
    "db_pool_size": 2,
    "db_max_overflow": 2,
    "job_pool_size": 2,
    "waiter_recheck_s": SAFETY_NET_S,
    "flex_poll_s": SAFETY_NET_S,
    "maintenance_every_s": 1,
    "batch_chunk": 4,
}
WORKER_CONCURRENCY = 4


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [{"name": "remote", "upstream": f"{mock_upstream}/v1", "flex_concurrency": 4}],
        LIMITS,
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def session_bouncer(database: DatabaseURL, logs: Path) -> Iterator[PgBouncer]:
    with run_pgbouncer(database, logs / "pgbouncer-session", pool_mode="session") as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def bounced(session_bouncer: PgBouncer, database: DatabaseURL) -> str:
    """The test database's address through PgBouncer in session mode."""
    url = session_bouncer.url(database)
    assert url.hosts == (("127.0.0.1", session_bouncer.port),)
    return url.libpq()


@pytest.fixture(scope="module")
def gateway(bounced: str, config: Path, logs: Path) -> Iterator[Gateway]:
    gw = start_gateway(database_url=bounced, config=config, log=logs / "gw.log", worker=False)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def worker(bounced: str, config: Path, logs: Path, db: psycopg.Connection) -> Iterator[Process]:
    process = start_worker_process(
        database_url=bounced, config=config, log=logs / "worker.log", concurrency=WORKER_CONCURRENCY
    )
    # Its flex dispatcher LISTENs (and has made its first look for work) once connected.
    wait_until(lambda: "tiergate-work" in connections_by_app(db), "the worker's flex LISTEN")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def bounced_key(bounced: str) -> str:
    return create_key(bounced, "through-pgbouncer")  # tiergate keys, through PgBouncer too


@pytest.fixture(scope="module")
def client(gateway: Gateway, bounced_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=bounced_key, max_retries=0, timeout=60)


def test_flex_calls_are_answered_by_notify_through_session_mode(
    client: openai.OpenAI, worker: Process
) -> None:
    for n in range(3):
        started = time.monotonic()
        answer = client.responses.create(model="remote", input=f"bounced {n}", service_tier="flex")
        took = time.monotonic() - started
        Response.model_validate(answer.model_dump())
        assert answer.status == "completed" and answer.service_tier == "flex"
        assert answer.output_text == f"echo: bounced {n}"
        # The worker was woken by tiergate_work, the gateway by tiergate_done: neither
        # safety net (SAFETY_NET_S) could have answered this soon.
        assert took < NOTIFIED_S, f"flex call {n} took {took:.1f} s"


def test_a_background_call_is_polled_to_completion(client: openai.OpenAI, worker: Process) -> None:
    queued = client.responses.create(
        model="remote", input="bounced later", background=True, service_tier="flex"
    )
    Response.model_validate(queued.model_dump())
    assert queued.status in ("queued", "in_progress")
    done = wait_until(
        lambda: (r := client.responses.retrieve(queued.id)).status == "completed" and r,
        "the background call to complete",
        timeout=TIMEOUT_S,
    )
    Response.model_validate(done.model_dump())
    assert done.id == queued.id and done.output_text == "echo: bounced later"


def test_a_batch_runs_on_procrastinate_through_session_mode(
    client: openai.OpenAI, worker: Process
) -> None:
    lines = [chat_line(f"line-{i}", f"bounced line {i}") for i in range(8)]
    batch_id = start_batch(client, lines).id
    done = wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status == "completed" and b,
        "the batch to complete",
        timeout=TIMEOUT_S,
    )
    Batch.model_validate(done.model_dump())
    assert done.request_counts is not None and done.request_counts.completed == len(lines)
    assert done.output_file_id is not None
    output = client.files.content(done.output_file_id).text.splitlines()
    assert len(output) == len(lines)


def test_keys_are_checked_and_a_revoked_key_is_refused_at_once(
    gateway: Gateway, client: openai.OpenAI, bounced: str
) -> None:
    assert "remote" in [m.id for m in client.models.list()]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.api, api_key="sk-not-a-key", max_retries=0).models.list()
    secret = create_key(bounced, "short-lived")
    user = openai.OpenAI(base_url=gateway.api, api_key=secret, max_retries=0)
    assert "remote" in [m.id for m in user.models.list()]  # now cached by the gateway
    subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", "short-lived"],
        env=base_env(DATABASE_URL=bounced),
        check=True,
        capture_output=True,
        timeout=60,
    )

    def refused() -> bool:
        try:
            user.models.list()
        except openai.AuthenticationError:
            return True
        return False

    # tiergate_keys reaches the gateway's LISTEN through PgBouncer: no cache expiry needed.
    wait_until(refused, "the revoked key to be refused", timeout=2.0)


def test_connections_through_session_mode_stay_within_the_documented_bound(
    gateway: Gateway, worker: Process, db: psycopg.Connection
) -> None:
    by_app = connections_by_app(db)
    assert by_app.get("tiergate-listen") == 1, by_app
    assert by_app.get("tiergate-work") == 1, by_app
    assert "tiergate-probe" not in by_app, by_app  # the start-up check closed its two
    assert by_app.get("tiergate", 0) <= LIMITS["db_pool_size"] + LIMITS["db_max_overflow"]
    worker_bound = min(WORKER_CONCURRENCY, 10) + LIMITS["job_pool_size"] + 1  # + its LISTEN
    assert by_app.get("tiergate-worker", 0) <= worker_bound, by_app


@pytest.fixture
def transaction_bouncer(database: DatabaseURL, tmp_path: Path) -> Iterator[str]:
    with run_pgbouncer(database, tmp_path / "pgbouncer", pool_mode="transaction") as bouncer:
        yield bouncer.url(database).libpq()


def test_transaction_mode_is_refused_at_start_with_a_reason(
    transaction_bouncer: str, config: Path, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="exited") as failed:
        start_gateway(
            database_url=transaction_bouncer, config=config, log=tmp_path / "gw.log", worker=False
        )
    assert "pool_mode = session" in str(failed.value), str(failed.value)[-2000:]
    assert "set DATABASE_DIRECT_URL" in str(failed.value), str(failed.value)[-2000:]
    worker = start_worker_process(
        database_url=transaction_bouncer, config=config, log=tmp_path / "worker.log"
    )
    assert worker.proc is not None
    assert worker.proc.wait(TIMEOUT_S) == 1
    log = worker.log.read_text()
    assert "worker cannot run: a NOTIFY did not reach a LISTEN connection" in log, log
