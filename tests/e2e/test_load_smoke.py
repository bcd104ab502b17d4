"""``bench/load.py`` at small scale: blocking flex clients and a batch at the same time, on one
gateway and on two."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.store.dburl import DatabaseURL
from app.testing.postgres import DatabaseFactory
from bench.load import LoadConfig, problems, render, run_load


@pytest.mark.timeout(120)
def test_flex_clients_and_a_batch_at_once_all_complete_within_the_pool(
    database: DatabaseURL, tmp_path: Path
) -> None:
    cfg = LoadConfig(
        clients=200, lines=300, workers=1, latency_ms=300, deadline_s=60, baselines=False
    )
    report = run_load(database, tmp_path, cfg, log=lambda _: None)
    both = report.combined
    assert both.flex is not None and both.batch is not None
    assert both.flex.ok == cfg.clients, render(report)
    assert both.batch.counts.get("completed") == cfg.lines, render(report)
    assert report.peak_gateway_conns <= cfg.connection_bound, render(report)
    # The gateway saw the clients wait together, not one after another.
    assert both.peak_waiting > cfg.clients // 2, render(report)
    assert problems(report) == [], render(report)


@pytest.mark.timeout(120)
def test_two_gateways_share_the_clients_and_the_batch(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    cfg = LoadConfig(
        clients=200,
        lines=300,
        gateways=2,
        workers=2,
        latency_ms=300,
        deadline_s=60,
        baselines=False,
    )
    report = run_load(databases.create(), tmp_path, cfg, log=lambda _: None)
    both = report.combined
    assert both.flex is not None and both.batch is not None
    assert both.flex.ok == cfg.clients, render(report)
    # Created at the first gateway, polled at both until completed.
    assert both.batch.counts.get("completed") == cfg.lines, render(report)
    assert report.peak_gateway_conns <= 2 * cfg.connection_bound, render(report)
    # Each gateway had its half of the clients waiting in it at once.
    each = both.peak_waiting_each
    assert len(each) == 2 and min(each) > cfg.clients // 4, render(report)
    assert len(both.peak_gateways_rss) == 2 and min(both.peak_gateways_rss) > 0, render(report)
    assert {"gateways", "workers", "mock"} <= set(both.cpu), render(report)
    assert problems(report) == [], render(report)
