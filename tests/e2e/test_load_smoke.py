"""``bench/load.py`` at small scale: blocking flex clients and a batch at the same time."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.store.dburl import DatabaseURL
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
