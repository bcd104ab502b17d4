"""A real Prometheus scrapes a gateway and a worker, and evaluates tiergate's alert rules.

Debian's ``prometheus`` (installed by ``.ci/run``) runs as its own process with a config in
the test's directory: 1 s scrapes and rule evaluations, the shipped rules with the queue-age
threshold lowered to seconds. A flex row held behind a slow call of a model that runs one
call at a time makes the queue-age alert fire; background calls that all fail make the
deferred error-rate alert pending (the worker's outcome counter, scraped from the worker).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import yaml
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import (
    START_TIMEOUT_S,
    Gateway,
    Process,
    create_key,
    free_port,
    start_gateway,
    start_metrics_worker,
    wait_http,
)
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "tiergate-rules.yml"
QUEUE_AGE_ALERT = "TiergateQueueAgeHigh"
DEFERRED_ERROR_ALERT = "TiergateDeferredErrorRateHigh"
SHIPPED_QUEUE_AGE = "> 300"  # the shipped threshold, lowered for the test
TEST_QUEUE_AGE_S = 3
HOLD = "prometheus-queue-age"
TIMEOUT_S = 90.0

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus binary is absent: Debian's prometheus package is not installed"
    " (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def config(home: Path, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        home / "tiergate.yaml",
        [
            {"name": "fast", "upstream": upstream},
            # One call at a time per worker: a slow call holds the next one in the queue.
            {"name": "held", "upstream": upstream, "timeout_s": 120, "flex_concurrency": 1},
        ],
        {
            "heartbeat_s": 0.5,
            "stalled_after_s": 5,
            "maintenance_every_s": 1,
            "metrics_max_age_s": 0.5,
        },
    )


@pytest.fixture(scope="module")
def gateway(database: DatabaseURL, config: Path, home: Path) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(), config=config, log=home / "gateway.log", worker=False
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def worker(database: DatabaseURL, config: Path, home: Path) -> Iterator[tuple[Process, str]]:
    process, url = start_metrics_worker(
        database_url=database.libpq(), config=config, log=home / "worker.log"
    )
    yield process, url
    process.stop()


def lowered_rules(home: Path) -> Path:
    """The shipped rules with the queue-age threshold in seconds and no ``for`` delay."""
    doc = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == QUEUE_AGE_ALERT]
    assert SHIPPED_QUEUE_AGE in rule["expr"], rule["expr"]
    rule["expr"] = rule["expr"].replace(SHIPPED_QUEUE_AGE, f"> {TEST_QUEUE_AGE_S}")
    rule["for"] = "1s"
    path = home / "rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prometheus(home: Path, gateway: Gateway, worker: tuple[Process, str]) -> Iterator[httpx.Client]:
    """``prometheus`` scraping both every second; an HTTP client on its API."""
    gateway_target = gateway.url.removeprefix("http://")
    settings = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(lowered_rules(home))],
        "scrape_configs": [
            {"job_name": "tiergate-gateway", "static_configs": [{"targets": [gateway_target]}]},
            {
                "job_name": "tiergate-worker",
                "static_configs": [{"targets": [urlsplit(worker[1]).netloc]}],
            },
        ],
    }
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    port = free_port()
    log = home / "prometheus.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready", proc, log, START_TIMEOUT_S)
        with httpx.Client(base_url=url, timeout=10) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


@pytest.fixture(scope="module")
def client(gateway: Gateway, database: DatabaseURL) -> openai.OpenAI:
    key = create_key(database.libpq(), "prom")
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=TIMEOUT_S)


def query(prometheus: httpx.Client, promql: str) -> list[dict[str, Any]]:
    """An instant query's samples."""
    answer = prometheus.get("/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def value(prometheus: httpx.Client, promql: str) -> float | None:
    """The single sample of ``promql`` (None when it has none)."""
    samples = query(prometheus, promql)
    assert len(samples) <= 1, samples
    return float(samples[0]["value"][1]) if samples else None


def rule_expr(name: str) -> str:
    """The shipped expression of the alert ``name``."""
    doc = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r["alert"] == name]
    return str(rule["expr"])


def alerts(prometheus: httpx.Client, name: str) -> list[dict[str, Any]]:
    answer = prometheus.get("/api/v1/alerts").json()
    assert answer["status"] == "success", answer
    return [a for a in answer["data"]["alerts"] if a["labels"]["alertname"] == name]


def test_prometheus_scrapes_the_gateway_and_the_worker(prometheus: httpx.Client):
    def both_up() -> list[dict[str, Any]] | None:
        targets = prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
        jobs = {t["labels"]["job"]: t["health"] for t in targets}
        ok = jobs == {"tiergate-gateway": "up", "tiergate-worker": "up"}
        return targets if ok else None

    wait_until(both_up, "both targets scraped and up", TIMEOUT_S)
    # The gateway exports the fleet's gauges: it sees the worker's heartbeat.
    worker_count = 'tiergate_processes{job="tiergate-gateway", kind="worker"}'
    wait_until(lambda: value(prometheus, worker_count) == 1, "one live worker", TIMEOUT_S)
    # The worker exports its own series (its maintenance duties' failure counters, at 0).
    failures = query(prometheus, 'tiergate_maintenance_failures_total{job="tiergate-worker"}')
    assert {s["metric"]["duty"] for s in failures} >= {"queue_depth", "rescue_requests"}
    assert all(float(s["value"][1]) == 0 for s in failures)
    # Gateway metrics are there: the "absent" alert's expression has no sample.
    assert not query(prometheus, rule_expr("TiergateMetricsAbsent"))


def test_calls_show_up_from_both_processes(prometheus: httpx.Client, client: openai.OpenAI):
    realtime = client.responses.create(model="fast", input="hello prometheus")
    assert realtime.status == "completed"
    flex = client.responses.create(model="fast", input="hello flex", service_tier="flex")
    assert flex.status == "completed" and flex.service_tier == "flex"

    def counted(tier: str) -> float | None:
        return value(
            prometheus,
            f'sum(tiergate_requests_total{{job="tiergate-gateway", tier="{tier}",'
            ' status="completed"}) >= 1',
        )

    wait_until(lambda: counted("default"), "the realtime call counted", TIMEOUT_S)
    wait_until(lambda: counted("flex"), "the flex call counted", TIMEOUT_S)
    # The flex call's tokens were counted by the worker that ran it, and scraped from it.
    tokens = 'sum(tiergate_tokens_total{job="tiergate-worker", model="fast", tier="flex"})'
    wait_until(lambda: (value(prometheus, tokens) or 0) > 0, "the worker's tokens", TIMEOUT_S)


def test_429s_are_counted_by_code(
    prometheus: httpx.Client, gateway: Gateway, database: DatabaseURL
):
    limited = openai.OpenAI(
        base_url=gateway.api,
        api_key=create_key(database.libpq(), "prom-rpm", options=["--rpm", "1"]),
        max_retries=0,
    )
    limited.responses.create(model="fast", input="the one call a minute")
    with pytest.raises(openai.RateLimitError) as over:
        limited.responses.create(model="fast", input="one too many")
    assert over.value.code == "rate_limit_exceeded"

    broke = openai.OpenAI(
        base_url=gateway.api,
        api_key=create_key(database.libpq(), "prom-budget", options=["--budget-usd", "0"]),
        max_retries=0,
    )
    with pytest.raises(openai.RateLimitError) as spent:
        broke.responses.create(model="fast", input="no budget")
    assert spent.value.code == "insufficient_quota"
    with pytest.raises(openai.RateLimitError) as no_batch:  # refused by the route itself
        broke.batches.create(
            input_file_id="file-none", endpoint="/v1/responses", completion_window="24h"
        )
    assert no_batch.value.code == "insufficient_quota"

    def by_code(code: str) -> float:
        found = value(prometheus, f'sum(tiergate_too_many_requests_total{{code="{code}"}})')
        return found or 0.0

    wait_until(lambda: by_code("rate_limit_exceeded") == 1, "the rpm 429 counted", TIMEOUT_S)
    wait_until(lambda: by_code("insufficient_quota") == 2, "both budget 429s", TIMEOUT_S)
    assert by_code("other") == 0


def test_a_queue_held_past_the_threshold_fires_the_queue_age_alert(
    prometheus: httpx.Client, client: openai.OpenAI, mock_upstream: str
):
    assert not alerts(prometheus, QUEUE_AGE_ALERT)  # nothing waits yet
    # The upstream holds this stream after its first event: the model's one slot stays taken.
    stream = client.responses.create(
        model="held",
        input=f"mock:hold={HOLD} holds the slot",
        background=True,
        stream=True,
        service_tier="flex",
    )
    slow = None
    held = None
    try:
        for event in stream:
            if event.type == "response.in_progress":
                slow = event.response.id
                break
        stream.close()
        assert slow is not None
        held = client.responses.create(
            model="held", input="waits behind it", background=True, service_tier="flex"
        )
        age = 'tiergate_queue_oldest_age_seconds{job="tiergate-gateway", model="held"}'
        wait_until(
            lambda: (value(prometheus, age) or 0) > TEST_QUEUE_AGE_S,
            "the held row's age past the threshold",
            TIMEOUT_S,
        )

        def firing() -> list[dict[str, Any]]:
            return [a for a in alerts(prometheus, QUEUE_AGE_ALERT) if a["state"] == "firing"]

        (alert,) = wait_until(firing, "the queue-age alert firing", TIMEOUT_S)
        assert alert["labels"]["model"] == "held" and alert["labels"]["tier"] == "flex"
        assert alert["labels"]["severity"] == "warning"
        assert "held" in alert["annotations"]["summary"]
        assert client.responses.retrieve(held.id).status == "queued"  # still waiting
    finally:
        httpx.post(f"{mock_upstream}/_mock/release/{HOLD}").raise_for_status()
    # Released, the held row runs; the next counts show no pending row, the alert resolves.
    assert client.responses.retrieve(slow).status in ("in_progress", "completed")
    wait_until(
        lambda: client.responses.retrieve(held.id).status == "completed",
        "the held row run",
        TIMEOUT_S,
    )
    wait_until(lambda: not alerts(prometheus, QUEUE_AGE_ALERT), "the alert resolved", TIMEOUT_S)


def test_failing_background_work_makes_the_deferred_error_rate_alert_pending(
    prometheus: httpx.Client, client: openai.OpenAI
):
    """The workers' outcome counter reaches Prometheus, and the shipped deferred error-rate
    rule sees a model whose background calls all fail (pending: its ``for`` is 10 minutes)."""
    failed = (
        'sum(tiergate_deferred_outcomes_total{job="tiergate-worker", model="fast",'
        ' tier="background", status="failed", code="upstream_400"})'
    )

    def fail_one(text: str) -> None:
        job = client.responses.create(
            model="fast", input=f"mock:status=400 {text}", background=True
        )
        done = wait_until(
            lambda: (r := client.responses.retrieve(job.id)).status == "failed" and r,
            "the call failed",
            TIMEOUT_S,
        )
        assert Response.model_validate(done.model_dump()).error is not None

    # A counter's first sample is no increase: the series is scraped once before it grows.
    fail_one("first")
    wait_until(lambda: value(prometheus, failed) == 1, "the first failure scraped", TIMEOUT_S)
    fail_one("second")
    wait_until(lambda: value(prometheus, failed) == 2, "the second failure scraped", TIMEOUT_S)
    expr = rule_expr(DEFERRED_ERROR_ALERT)
    (sample,) = wait_until(lambda: query(prometheus, expr), "the rule's expression true", TIMEOUT_S)
    assert sample["metric"] == {"model": "fast", "tier": "background"}
    assert float(sample["value"][1]) == 1.0  # every background call of the model failed

    def pending() -> list[dict[str, Any]]:
        return [a for a in alerts(prometheus, DEFERRED_ERROR_ALERT) if a["state"] == "pending"]

    (alert,) = wait_until(pending, "the deferred error-rate alert pending", TIMEOUT_S)
    assert alert["labels"]["model"] == "fast" and alert["labels"]["tier"] == "background"
    assert alert["labels"]["severity"] == "warning"


def test_a_worker_gone_makes_the_workers_gone_expression_true(
    prometheus: httpx.Client, worker: tuple[Process, int]
):
    expr = rule_expr("TiergateWorkersGone")
    assert not query(prometheus, expr)  # a worker is alive
    worker[0].stop()
    wait_until(lambda: query(prometheus, expr), "no live worker seen", TIMEOUT_S)
