"""Conversations by id: ``previous_response_id`` is resolved by tiergate at acceptance.

The earlier Response (same key) lends its input and output, which go before the new input;
the request is stored and sent upstream with that whole input, and the upstream never sees
the id (``app/upstream/client.py`` strips the field). Because each stored input is already
whole, a chain of any length costs one read of its last link.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.engine import RowMapping

from app.ids import plausible_id
from app.keys import ApiKey
from app.openai.errors import MAX_SHOWN_ID, APIError, bad_request
from app.openai.items import continued
from app.openai.validation import Call
from app.store.conversations import ConversationStore
from app.vocabulary import LIVE, Endpoint, RequestErrorCode

FIELD = "previous_response_id"


def previous_id(body: dict[str, Any]) -> str | None:
    """The id a Responses body continues from, if any (a malformed one is not found)."""
    value = body.get(FIELD)
    if value is None:
        return None
    if not isinstance(value, str) or not plausible_id(value):
        raise not_found(str(value))
    return value


def not_found(previous: str) -> APIError:
    return APIError(
        404,
        f"Previous response with id '{previous[:MAX_SHOWN_ID]}' not found.",
        param=FIELD,
        code=RequestErrorCode.PREVIOUS_RESPONSE_NOT_FOUND,
    )


def resolved(body: dict[str, Any], previous: str, row: RowMapping | None) -> dict[str, Any]:
    """``body`` with the history of ``row`` (the Response named ``previous``) before its
    input. Raises ``APIError`` when that Response is unknown or not finished."""
    if row is None:
        raise not_found(previous)
    if row["status"] in LIVE:
        raise bad_request(
            f"Previous response with id '{previous}' is still {row['status']}; continue it "
            "once it has finished.",
            param=FIELD,
            code=RequestErrorCode.PREVIOUS_RESPONSE_NOT_FINISHED,
        )
    return {**body, "input": continued(row["input"], row["output"], body.get("input"))}


class Conversations:
    """Resolves ``previous_response_id`` for the calls of every tier."""

    def __init__(self, store: ConversationStore) -> None:
        self.store = store

    async def resolve(self, call: Call, key: ApiKey) -> Call:
        """``call`` with its whole input, when it continues an earlier Response."""
        if call.endpoint != Endpoint.RESPONSES:
            return call
        previous = previous_id(call.body)
        if previous is None:
            return call
        found = await self.store.previous([previous], key.id)
        return dataclasses.replace(call, body=resolved(call.body, previous, found.get(previous)))

    async def resolve_many(
        self, bodies: list[dict[str, Any]], owner: str
    ) -> list[dict[str, Any] | APIError]:
        """Each body with its whole input, or the error that refuses it (one query)."""
        wanted: list[str | APIError | None] = []
        for body in bodies:
            try:
                wanted.append(previous_id(body))
            except APIError as exc:
                wanted.append(exc)
        found = await self.store.previous([w for w in wanted if isinstance(w, str)], owner)
        out: list[dict[str, Any] | APIError] = []
        for body, previous in zip(bodies, wanted, strict=True):
            if isinstance(previous, APIError):
                out.append(previous)
            elif previous is None:
                out.append(body)
            else:
                try:
                    out.append(resolved(body, previous, found.get(previous)))
                except APIError as exc:
                    out.append(exc)
        return out
