"""Rows leave the store as typed objects: each repository maps what a query returns once,
with :meth:`FromRow.from_row`, and the layers above read attributes, never column names.

A row class is a frozen dataclass (``slots=True``) whose fields are the columns its query
returns; a query that returns more columns than the class names is fine (they are left out),
one that returns fewer fails at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    """The field names of a row class, computed once per class."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


class FromRow:
    """Mixin of the row dataclasses: ``from_row`` builds one from a SQLAlchemy RowMapping."""

    __slots__ = ()

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        """The object of one row (a SQLAlchemy RowMapping, or any mapping of the columns)."""
        return cls(**{name: row[name] for name in _names(cls)})
