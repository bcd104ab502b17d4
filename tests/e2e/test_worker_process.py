"""Work is durable: it waits for a worker, and survives a worker killed mid-request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, Process, create_key, start_gateway, start_worker
from tests.e2e.conftest import row
from tests.support.batches import responses_line, start_batch
from tests.support.waiting import wait_until

TIMEOUT_S = 60.0


def rescue_config(path: Path, mock_upstream: str, long_cap: int = 2) -> Path:
    """Fast heartbeats and rescue; ``long`` runs at most ``long_cap`` calls per worker."""
    upstream = f"{mock_upstream}/v1"
    return write_config(
        path,
        [
            {"name": "remote", "upstream": upstream, "timeout_s": 5},
            {
                "name": "capped",
                "upstream": upstream,
                "upstream_model": "capped-upstream",
                "flex_concurrency": 2,
            },
            {"name": "long", "upstream": upstream, "timeout_s": 60, "flex_concurrency": long_cap},
        ],
        {"heartbeat_s": 0.5, "stalled_after_s": 2, "maintenance_every_s": 1},
    )


@pytest.fixture(scope="module")
def fast_rescue_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return rescue_config(tmp_path_factory.mktemp("config") / "tiergate.yaml", mock_upstream)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def gateway(database: DatabaseURL, fast_rescue_config: Path, logs: Path) -> Iterator[Gateway]:
    """A gateway without an in-process worker: only the workers we start run jobs."""
    gw = start_gateway(
        database_url=database.libpq(),
        config=fast_rescue_config,
        log=logs / "gw.log",
        worker=False,
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway, database: DatabaseURL) -> openai.OpenAI:
    key = create_key(database.libpq(), "durable")
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=TIMEOUT_S)


def test_work_waits_for_a_worker_then_completes(
    client: openai.OpenAI,
    database: DatabaseURL,
    fast_rescue_config: Path,
    logs: Path,
    db: psycopg.Connection,
):
    background = client.responses.create(
        model="remote", input="queued for later", background=True, service_tier="flex"
    )
    blocking: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: blocking.update(
            r=client.responses.create(model="remote", input="blocking", service_tier="flex")
        )
    )
    thread.start()
    wait_until(
        lambda: (
            db.execute("SELECT count(*) FROM requests WHERE status = 'pending'").fetchone()[0] == 2
        ),
        "two pending rows",
    )
    assert client.responses.retrieve(background.id).status == "queued"

    worker = start_worker(
        database_url=database.libpq(), config=fast_rescue_config, log=logs / "worker-1.log"
    )
    try:
        thread.join(TIMEOUT_S)
        assert blocking["r"].output_text == "echo: blocking"  # type: ignore[attr-defined]
        wait_until(
            lambda: client.responses.retrieve(background.id).status == "completed",
            "background completion",
        )
    finally:
        worker.stop()


def test_a_killed_worker_s_request_is_rescued(
    client: openai.OpenAI,
    database: DatabaseURL,
    fast_rescue_config: Path,
    logs: Path,
    db: psycopg.Connection,
):
    first = start_worker(
        database_url=database.libpq(), config=fast_rescue_config, log=logs / "worker-2.log"
    )
    second: Process | None = None
    try:
        created = client.responses.create(
            model="remote", input="mock:sleep_ms=1500", background=True, service_tier="flex"
        )
        wait_until(
            lambda: client.responses.retrieve(created.id).status == "in_progress",
            "the first worker to start it",
        )
        first.kill()  # SIGKILL mid-request: no chance to clean up
        second = start_worker(
            database_url=database.libpq(), config=fast_rescue_config, log=logs / "worker-3.log"
        )
        wait_until(
            lambda: client.responses.retrieve(created.id).status == "completed",
            "rescue and completion",
        )
        tracked = row(db, created.id)
        assert tracked["attempts"] == 2  # run once by the dead worker, once after the rescue
        assert tracked["status"] == "completed"
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_rescue_does_not_wait_for_busy_slots_or_a_backlog(
    client: openai.OpenAI,
    database: DatabaseURL,
    fast_rescue_config: Path,
    mock_upstream: str,
    logs: Path,
    db: psycopg.Connection,
):
    """The only live worker has every slot of the model busy with long calls and a backlog
    queued behind them: the request the dead worker had claimed is still given back at once
    (the sweep runs on each worker's own timer, not behind its work)."""
    doomed = start_worker(
        database_url=database.libpq(),
        config=rescue_config(logs / "doomed.yaml", mock_upstream, long_cap=1),
        log=logs / "worker-doomed.log",
    )
    busy: Process | None = None
    try:
        orphan = client.responses.create(
            model="long", input="mock:sleep_ms=60000", background=True, service_tier="flex"
        )
        wait_until(
            lambda: client.responses.retrieve(orphan.id).status == "in_progress",
            "the doomed worker to start it",
        )
        doomed_id = row(db, orphan.id)["claimed_by"]
        busy = start_worker(
            database_url=database.libpq(), config=fast_rescue_config, log=logs / "worker-busy.log"
        )
        long_calls = [
            client.responses.create(
                model="long", input="mock:sleep_ms=30000", background=True, service_tier="flex"
            ).id
            for _ in range(2)
        ]
        wait_until(
            lambda: all(client.responses.retrieve(i).status == "in_progress" for i in long_calls),
            "the live worker's slots to fill",
        )
        assert all(row(db, i)["claimed_by"] != doomed_id for i in long_calls)  # the doomed is full
        backlog = [
            client.responses.create(
                model="long", input="backlog", background=True, service_tier="flex"
            ).id
            for _ in range(5)
        ]
        doomed.kill()  # now: the only live worker has no free slot, and a backlog waits
        wait_until(
            lambda: row(db, orphan.id)["claimed_by"] is None,
            "the dead worker's request to be given back",
        )
        rescued = row(db, orphan.id)
        assert rescued["status"] == "pending" and rescued["attempts"] == 1
        # Given back while both slots were still busy and the backlog still queued.
        assert [client.responses.retrieve(i).status for i in long_calls] == ["in_progress"] * 2
        assert client.responses.retrieve(backlog[-1]).status == "queued"
    finally:
        doomed.kill()
        if busy is not None:
            busy.kill()  # its requests are given back later and find their rows gone
    for request_id in [orphan.id, *long_calls, *backlog]:
        client.responses.delete(request_id)


def test_per_model_cap_holds_while_the_worker_has_room(
    client: openai.OpenAI,
    database: DatabaseURL,
    fast_rescue_config: Path,
    logs: Path,
    mock_upstream: str,
):
    created = [
        client.responses.create(
            model="capped", input="mock:sleep_ms=300", background=True, service_tier="flex"
        )
        for _ in range(6)
    ]
    worker = start_worker(
        database_url=database.libpq(),
        config=fast_rescue_config,
        log=logs / "worker-cap.log",
        concurrency=8,
    )
    try:
        for response in created:
            wait_until(
                lambda r=response: client.responses.retrieve(r.id).status == "completed",
                "capped work",
            )
    finally:
        worker.stop()
    peaks = httpx.get(mock_upstream + "/_mock/peaks").json()
    assert peaks["capped-upstream"] == 2  # flex_concurrency, though 6 requests were ready


def test_gateway_killed_mid_flight_loses_nothing(
    client: openai.OpenAI,
    database: DatabaseURL,
    fast_rescue_config: Path,
    logs: Path,
    db: psycopg.Connection,
):
    """SIGKILL a gateway (with its in-process worker) while it runs background and blocking
    flex work and proxies a realtime call. After a restart every accepted request completes
    (once more for those the dead worker had started) and the realtime row is closed as
    interrupted."""
    since = db.execute("SELECT now()").fetchone()[0]
    first = start_gateway(
        database_url=database.libpq(), config=fast_rescue_config, log=logs / "gw-crash-1.log"
    )
    crashing = client.with_options(base_url=first.api)
    background = [
        crashing.responses.create(
            model="remote", input=f"mock:sleep_ms=1500 bg {i}", background=True,
            service_tier="flex",
        ).id
        for i in range(10)
    ]  # fmt: skip
    blocking_errors: list[BaseException] = []

    def call(**kwargs: object) -> None:
        try:
            crashing.responses.create(model="remote", **kwargs)  # type: ignore[call-overload]
        except openai.APIError as exc:  # its gateway dies mid-call
            blocking_errors.append(exc)

    callers = [
        threading.Thread(
            target=call, kwargs={"input": f"mock:sleep_ms=1500 flex {i}", "service_tier": "flex"}
        )
        for i in range(5)
    ] + [threading.Thread(target=call, kwargs={"input": "mock:sleep_ms=3000"})]
    for caller in callers:
        caller.start()
    flex_rows = (
        "SELECT id, status FROM requests"
        " WHERE service_tier = 'flex' AND NOT background AND created_at > %s"
    )
    wait_until(
        lambda: (
            len(db.execute(flex_rows, (since,)).fetchall()) == 5
            and db.execute(
                "SELECT count(*) FROM requests WHERE service_tier = 'default' AND NOT background"
                " AND status = 'in_progress'"
            ).fetchone()[0]
            == 1
            and client.responses.retrieve(background[0]).status == "in_progress"
        ),
        "blocking flex rows, the realtime call and running background work",
    )
    first.process.kill()
    for caller in callers:
        caller.join(TIMEOUT_S)
    assert len(blocking_errors) == 6  # every waiting client saw its connection die

    second = start_gateway(
        database_url=database.libpq(), config=fast_rescue_config, log=logs / "gw-crash-2.log"
    )
    try:
        for request_id in background:
            wait_until(
                lambda r=request_id: client.responses.retrieve(r).status == "completed",
                f"background request {request_id}",
            )
        wait_until(
            lambda: {s for _, s in db.execute(flex_rows, (since,))} == {"completed"},
            "the blocking flex rows to complete",
        )
        flex_ids = [i for i, _ in db.execute(flex_rows, (since,))]
        # Readable by id afterwards, with the answer the client would have had.
        assert sorted(client.responses.retrieve(i).output_text for i in flex_ids) == [
            f"echo: mock:sleep_ms=1500 flex {i}" for i in range(5)
        ]
        assert any(row(db, i)["attempts"] == 2 for i in background)  # rescued ones ran again
        wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM requests WHERE error->>'code' = 'gateway_interrupted'"
                ).fetchone()[0]
                == 1
            ),
            "the interrupted realtime row to be closed",
        )
        assert db.execute(
            "SELECT count(*) FROM requests"
            " WHERE status IN ('pending', 'in_progress') AND created_at > %s",
            (since,),
        ).fetchone() == (0,)
    finally:
        second.process.stop()


def test_batch_survives_a_killed_worker(
    client: openai.OpenAI, database: DatabaseURL, fast_rescue_config: Path, logs: Path
):
    """A worker dies mid-batch (SIGKILL); a new one rescues its job and takes back the lines
    that job had claimed. Every custom_id ends up exactly once across the result files."""
    lines = [responses_line(f"k-{i}", "mock:sleep_ms=50") for i in range(300)]
    first = start_worker(
        database_url=database.libpq(), config=fast_rescue_config, log=logs / "worker-batch-1.log"
    )
    second: Process | None = None
    try:
        batch = start_batch(client, lines)
        wait_until(
            lambda: client.batches.retrieve(batch.id).request_counts.completed >= 20,
            "the batch to be under way",
        )
        first.kill()
        second = start_worker(
            database_url=database.libpq(),
            config=fast_rescue_config,
            log=logs / "worker-batch-2.log",
        )
        wait_until(
            lambda: client.batches.retrieve(batch.id).status == "completed",
            "the batch to complete after the rescue",
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()
    done = client.batches.retrieve(batch.id)
    assert (done.request_counts.completed, done.request_counts.failed) == (300, 0)
    ids = [
        json.loads(line)["custom_id"]
        for line in client.files.content(done.output_file_id).read().splitlines()
    ]
    assert sorted(ids) == sorted(f"k-{i}" for i in range(300))
