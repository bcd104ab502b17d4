"""A tiny HTML template helper: every value is escaped unless it is already ``Markup``.

Templates are ``str.format`` strings written in this package; values (custom ids, metadata,
error messages, key names) come from clients and are always escaped, so ``<script>`` shows as
text.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable
from decimal import Decimal
from typing import Any


class Markup(str):
    """HTML that is already safe: it is inserted as is."""

    __slots__ = ()


def escape(value: Any) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(text(value), quote=True))


def render(template: str, **values: Any) -> Markup:
    """``template.format`` with every value escaped."""
    return Markup(template.format(**{name: escape(v) for name, v in values.items()}))


def join(parts: Iterable[Markup]) -> Markup:
    return Markup("".join(escape(part) for part in parts))


def text(value: Any) -> str:
    """How a value reads on a page."""
    if value is None:
        return "—"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(
    headers: Iterable[str], rows: Iterable[Iterable[Any]], *, empty: str, cls: str = ""
) -> Markup:
    """A table in a horizontally scrolling box; ``cls="stack"`` tables become one card per
    row on narrow windows (each cell labelled by its header). ``empty`` says what is true when
    there is no row ("no errors", "no request matches")."""
    names = list(headers)
    head = join(render("<th>{h}</th>", h=h) for h in names)
    body = join(
        Markup(
            "<tr>"
            + join(
                render('<td data-label="{h}">{c}</td>', h=h, c=c)
                for h, c in zip(names, row, strict=True)
            )
            + "</tr>"
        )
        for row in rows
    )
    return render(
        '<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        "<tbody>{body}</tbody></table></div>",
        cls=cls,
        head=head,
        body=body or render('<tr><td colspan="99" class="empty">{e}</td></tr>', e=empty),
    )


def link(href: str, label: Any) -> Markup:
    return render('<a href="{href}">{label}</a>', href=href, label=label)
