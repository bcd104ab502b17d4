"""A separate ``tiergate worker`` counts the work it finishes on its own ``--metrics-port``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from app.store.dburl import DatabaseURL
from app.testing.processes import start_metrics_worker
from tests.e2e.conftest import row
from tests.e2e.test_usage import metric


@pytest.fixture(scope="module")
def with_worker() -> bool:
    return False


@pytest.fixture(scope="module")
def worker_metrics(
    database: DatabaseURL, gateway_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    worker, url = start_metrics_worker(
        database_url=database.libpq(),
        config=gateway_config,
        log=tmp_path_factory.mktemp("logs") / "worker.log",
        concurrency=8,
    )
    yield url
    worker.stop()


def test_the_worker_counts_what_it_finishes(
    gateway, client: openai.OpenAI, db: psycopg.Connection, worker_metrics: str
):
    answer = client.responses.create(
        model="remote", input="mock:cached=1 counted by the worker", service_tier="flex"
    )
    r = row(db, answer.id)
    assert r["input_tokens"] > 0 and r["cached_tokens"] == 1
    labels = {"model": "remote", "tier": "flex", "key": "alice"}
    text = httpx.get(worker_metrics).text
    assert metric(text, "tiergate_tokens_total", kind="input", **labels) == r["input_tokens"]
    assert metric(text, "tiergate_tokens_total", kind="output", **labels) == r["output_tokens"]
    assert metric(text, "tiergate_tokens_total", kind="cached", **labels) == 1
    gateway_text = httpx.get(gateway.url + "/metrics").text
    assert metric(gateway_text, "tiergate_tokens_total", **labels) == 0  # not finished there
