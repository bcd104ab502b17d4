"""bench/scale.py end to end, small: 200,000 rows of history seeded between two measurements.

The figures are printed by the bench (``make bench-scale`` for 5,000,000 rows); here they only
have to exist: every measurement ran on both sides, on a database that really holds the seed.
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import pytest

from bench.scale import run_scale


@pytest.mark.timeout(300)
def test_scale_bench_measures_before_and_after_a_seeded_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bench.scale.IDLE_S", 2.0)
    before, after, report = run_scale(
        tmp_path, rows=200_000, pending=20_000, jobs=20_000, flex=20, lines=300
    )
    print("\n".join(report))
    for figures in (before, after):
        flex, get, batch_s, _pg, metrics, sweep, idle = astuple(figures)
        assert min(flex, get, batch_s, metrics, sweep) > 0, figures
        assert 0 <= idle < 1, figures
    assert "200000 finished and 20000 pending requests" in report[0]
    assert any("MiB per million rows" in line for line in report)
