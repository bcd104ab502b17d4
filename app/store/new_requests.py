"""A call becomes a row: the columns every new ``requests`` row starts with.

Three paths write new rows, each in its own bulk statement: realtime tracking
(``realtime.py``), deferred acceptance (``requests.py``) and a cache hit (``cache.py``). Their
records share this head, and :func:`new_request_arrays` gives its columns as the arrays those
``INSERT ... SELECT FROM unnest(...)`` statements take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from app.store.outcomes import dumps
from app.vocabulary import Tier


@dataclass(frozen=True, kw_only=True)
class NewRequest:
    """The columns of a new request row that every path sets."""

    id: str
    owner: str  # the key's id
    endpoint: str
    model: str
    stream: bool
    body: dict[str, Any]
    tier: str = Tier.DEFAULT
    background: bool = False


def new_request_arrays(rows: Sequence[NewRequest]) -> dict[str, list[Any]]:
    """The shared columns of ``rows`` as arrays, bodies as JSON text."""
    return {
        "ids": [r.id for r in rows],
        "owners": [r.owner for r in rows],
        "endpoints": [r.endpoint for r in rows],
        "models": [r.model for r in rows],
        "tiers": [r.tier for r in rows],
        "backgrounds": [r.background for r in rows],
        "streams": [r.stream for r in rows],
        "bodies": [dumps(r.body) for r in rows],
    }


class RowColumns(TypedDict):
    """The shared columns under the names of the ``requests`` table (``RequestRow``'s)."""

    id: str
    owner_key_id: str
    endpoint: str
    model: str
    service_tier: str
    body: dict[str, Any]
    background: bool
    stream: bool


def new_request_columns(row: NewRequest) -> RowColumns:
    """``row``'s shared columns as ``RequestRow`` takes them, for a view of a row that is not
    read back."""
    return RowColumns(
        id=row.id,
        owner_key_id=row.owner,
        endpoint=row.endpoint,
        model=row.model,
        service_tier=row.tier,
        body=row.body,
        background=row.background,
        stream=row.stream,
    )
