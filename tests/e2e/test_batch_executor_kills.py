"""The ``batch`` executor survives its own worker's death and its provider's outage.

Tiergate A (a gateway and a worker process) sends a 1,000-line batch to the Batch API of
tiergate B (in front of the mock provider). While B runs A's job, A's worker is SIGKILLed and
another started, then B is stopped for a minute and started again. Every line completes
exactly once, and B holds exactly the jobs A recorded: none was created twice.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psycopg
import pytest
from openai.types import Batch

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.postgres import DatabaseFactory
from app.testing.processes import (
    Gateway,
    Process,
    create_key,
    free_port,
    start_gateway,
    start_worker,
)
from tests.support.waiting import wait_until

LINES = 1000
PROVIDER_DOWN_S = 60


@dataclass
class Provider:
    """Tiergate B, restartable on its port."""

    database: DatabaseURL
    config: Path
    logs: Path
    port: int = field(default_factory=free_port)
    gateway: Gateway | None = None

    def start(self) -> Gateway:
        self.gateway = start_gateway(
            database_url=self.database.libpq(),
            config=self.config,
            log=self.logs / f"inner-{time.monotonic_ns()}.log",
            port=self.port,
        )
        return self.gateway

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.process.stop()
            self.gateway = None


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def provider(
    databases: DatabaseFactory,
    mock_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
    logs: Path,
) -> Iterator[Provider]:
    config = write_config(
        tmp_path_factory.mktemp("inner") / "tiergate.yaml",
        [
            {
                "name": "inner",
                # slow enough that A's job is still running when A's worker dies
                "deployments": [
                    {
                        "name": "mock",
                        "upstream": f"{mock_upstream}/v1",
                        "headers": {"x-mock-behavior": "sleep_ms=20"},
                    }
                ],
                "flex_concurrency": 4,
            }
        ],
        {"max_batch_lines": LINES},
    )
    b = Provider(databases.create(), config, logs)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def provider_key(provider: Provider) -> str:
    return create_key(provider.database.libpq(), "outer-gateway")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "paid",
                "deployments": [
                    {
                        "name": "b",
                        "upstream": f"http://127.0.0.1:{provider.port}/v1",
                        "upstream_model": "inner",
                        "api_key_env": "INNER_KEY",
                        "executor": "batch",
                        "batch": {
                            "turnaround_s": 600,
                            "margin_s": 60,
                            "gather_s": 3,
                            "poll_min_s": 0.2,
                            "poll_max_s": 2,
                        },
                    }
                ],
            }
        ],
        {
            "heartbeat_s": 0.5,
            "stalled_after_s": 2,
            "maintenance_every_s": 1,
            "max_batch_lines": LINES,
        },
    )


@pytest.fixture(scope="module")
def gateway(database: DatabaseURL, config: Path, logs: Path) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(), config=config, log=logs / "outer.log", worker=False
    )
    yield gw
    gw.process.stop()


def worker(database: DatabaseURL, config: Path, logs: Path, key: str, n: int) -> Process:
    return start_worker(
        database_url=database.libpq(),
        config=config,
        log=logs / f"worker-{n}.log",
        env={"INNER_KEY": key},
    )


def test_a_batch_survives_its_workers_death_and_its_providers_outage(
    gateway: Gateway,
    database: DatabaseURL,
    db: psycopg.Connection,
    config: Path,
    logs: Path,
    provider: Provider,
    provider_key: str,
):
    client = openai.OpenAI(
        base_url=gateway.api, api_key=create_key(database.libpq(), "kills"), max_retries=0
    )
    first = worker(database, config, logs, provider_key, 1)
    content = "".join(
        json.dumps(
            {
                "custom_id": f"k{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "paid", "messages": [{"role": "user", "content": f"k{i}"}]},
            }
        )
        + "\n"
        for i in range(LINES)
    )
    upload = client.files.create(file=("in.jsonl", io.BytesIO(content.encode())), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_until(
        lambda: db.execute(
            "SELECT 1 FROM upstream_jobs WHERE upstream_batch_id IS NOT NULL"
        ).fetchone(),
        timeout=60,
        what="a job running at the provider",
    )
    first.kill()  # SIGKILL while it polls
    second = worker(database, config, logs, provider_key, 2)
    try:
        provider.stop()
        time.sleep(PROVIDER_DOWN_S)  # the outage itself: nothing to wait for
        provider.start()
        done = wait_until(
            lambda: (
                (b := client.batches.retrieve(batch.id)).status
                in ("completed", "failed", "expired", "cancelled")
                and b
            ),
            timeout=240,
            what="the batch to end",
        )
    finally:
        second.stop()
    done = Batch.model_validate(done.model_dump())
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
    assert done.output_file_id is not None
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"k{i}" for i in range(LINES))
    # B holds exactly the jobs A recorded, each once, tagged with A's id
    recorded = dict(
        db.execute(
            "SELECT upstream_batch_id, id FROM upstream_jobs WHERE upstream_batch_id IS NOT NULL"
        ).fetchall()
    )
    assert db.execute("SELECT count(*) FROM upstream_jobs WHERE status <> 'ended'").fetchone() == (
        0,
    )
    inner = openai.OpenAI(
        base_url=provider.gateway.api if provider.gateway else "", api_key=provider_key
    )
    at_b = {b.id: (b.metadata or {}).get("tiergate_job") for b in inner.batches.list(limit=100)}
    assert at_b == recorded
    lines_at_b = sum(
        (b.request_counts.total if b.request_counts else 0) for b in inner.batches.list(limit=100)
    )
    print(f"{len(at_b)} job(s) at the provider held {lines_at_b} lines for {LINES} rows")
