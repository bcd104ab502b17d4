"""Reads of earlier Responses that new ones continue (``previous_response_id``)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

# One row per id: the status, the (already resolved) input and the output of a Response of
# this key. A row's input holds its whole history, so a chain needs no walk.
PREVIOUS = text(
    """
SELECT id, status, body -> 'input' AS input, response_body -> 'output' AS output
FROM requests
WHERE id = ANY(:ids) AND owner_key_id = :owner AND endpoint = '/v1/responses'
"""
)


class ConversationStore:
    """Earlier Responses of a key, read in one query however many are asked for."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def previous(self, ids: list[str], owner: str) -> dict[str, RowMapping]:
        """The Responses of ``owner`` among ``ids``, by id (another key's are not found)."""
        if not ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(PREVIOUS, {"ids": ids, "owner": owner})).mappings()
            return {row["id"]: row for row in rows}
