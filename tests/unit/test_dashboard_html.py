"""The dashboard's template helper escapes every value it did not write itself."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from app.dashboard.html import Markup, render, table, text

EVIL = '<script>alert("x")</script>&\''


def test_values_are_escaped_and_markup_is_not():
    page = render('<p title="{v}">{v}{safe}</p>', v=EVIL, safe=Markup("<b>ok</b>"))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&quot;" in page and "&#x27;" in page and "&amp;" in page
    assert page.endswith("<b>ok</b></p>")


def test_table_cells_and_headers_are_escaped():
    html = table([EVIL], [[EVIL]], empty="none", cls="stack")
    assert "<script>" not in html and html.count("&lt;script&gt;") == 3  # th, label, td


def test_an_empty_table_says_what_is_true():
    assert '<td colspan="99" class="empty">no request matches</td>' in table(
        ["a"], [], empty="no request matches"
    )
    assert "&lt;script&gt;" in table(["a"], [], empty=EVIL)


def test_values_read_as_people_write_them():
    assert text(None) == "—"
    assert text(1234567) == "1,234,567"
    assert text(True) == "yes"
    assert text(Decimal("0.001500")) == "0.0015"
    when = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
    assert text(when) == "2026-12-06 09:00:00 UTC"
