"""``tiergate usage``: dates, the table and its totals, unknown costs."""

from __future__ import annotations

import argparse
import datetime as dt
from decimal import Decimal

import pytest

from app.cli.main import build_parser
from app.cli.usage import parse_when, table
from app.store.usage import UsageRow


def test_dates_and_times():
    assert parse_when("2026-12-01") == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert parse_when("2026-12-01", end=True) == dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    assert parse_when("2026-12-01T08:30") == dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC)
    offset = parse_when("2026-12-01T08:30+02:00")
    assert offset == dt.datetime(2026, 12, 1, 6, 30, tzinfo=dt.UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="not a date"):
        parse_when("yesterday")


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]):
    parser = build_parser()
    for argv in (["usage", "--since", "soon"], ["usage", "--by", "colour"]):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 2
    assert "not a date" in capsys.readouterr().err
    assert parser.parse_args(["usage", "--by", "executor"]).by == "executor"


def test_the_table_totals_and_marks_unknown_costs():
    rows = [
        UsageRow("big", 3, 1200, 200, 3400, 10, Decimal("0.0512345"), 1, 0),
        UsageRow("free", 2, 10, 0, 20, 0, None, 0, 2),
        UsageRow("mixed", 4, 5, 0, 5, 0, Decimal("0.01"), 0, 1),
    ]
    lines = table(rows, "model").splitlines()
    cells = {line.split()[0]: line.split() for line in lines}
    assert cells["MODEL"][1:] == [
        "REQUESTS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "COST",
        "USD",
    ]
    assert cells["big"][1:] == ["3", "1,200", "200", "3,400", "10", "0.0512"]
    assert cells["free"][-1] == "-"
    assert cells["mixed"][-1] == "0.0100+?"
    assert cells["TOTAL"][1:] == ["9", "1,215", "200", "3,425", "10", "0.0612+?"]
    assert "(1 request(s) with usage estimated by tiergate)" in lines
    assert "(+?: 3 request(s) of models without a price)" in lines
