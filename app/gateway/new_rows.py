"""The columns a classified call gives its new request row, whichever path writes it."""

from __future__ import annotations

from typing import Any, TypedDict

from app.openai.validation import Call


class CallColumns(TypedDict):
    """``app.store.new_requests.NewRequest``'s fields, as keywords."""

    id: str
    owner: str
    endpoint: str
    model: str
    stream: bool
    body: dict[str, Any]
    tier: str
    background: bool


def call_columns(call: Call, rid: str, owner: str) -> CallColumns:
    """The shared columns of ``call``'s row ``rid``, owned by the key ``owner``."""
    return CallColumns(
        id=rid,
        owner=owner,
        endpoint=call.endpoint,
        model=call.model.name,
        stream=call.stream,
        body=call.body,
        tier=call.tier,
        background=call.background,
    )
