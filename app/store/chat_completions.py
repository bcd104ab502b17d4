"""SQL of OpenAI's stored chat completions API (``app/api/routes/chat_completions.py``).

tiergate keeps a row for every chat completion, whatever its tier; the ones this API lists
are ``STORED_CHAT`` (``app/store/schema.py``): completed, not deleted, not created with
``store: false``. A page is one range of the partial index ``requests_stored_chat_idx``
(owner, ``created_at``, ``id``): keyset pagination, the ``after`` id's own
``(created_at, id)`` as the bound, never an OFFSET, so a page costs the same on the first
day and after millions of rows. ``model`` and ``metadata`` filter the rows of that range.

Updating metadata writes ``requests.metadata`` (the request body stays as it was sent);
deleting stamps ``deleted_at`` and clears the body and the answer but keeps the row, so the
usage and cost reports still count the call. Each is one statement.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.requests import RequestRow
from app.store.schema import STORED_CHAT
from app.vocabulary import FINAL_BATCH, Endpoint, Status, sql_in

# A finished row of the API's own: a chat completion of the key, not deleted. Retrieving,
# updating and deleting by id take any completed one of these, ``store: false`` included.
OWN_CHAT = (
    f"id = :id AND owner_key_id = :owner AND endpoint = '{Endpoint.CHAT}'"
    f" AND status = '{Status.COMPLETED}' AND deleted_at IS NULL"
)
# Within the retention (a finished row older than it reads as gone, as RequestStore says).
RETAINED = (
    "(CAST(:retention_days AS integer) IS NULL"
    " OR created_at >= now() - make_interval(days => CAST(:retention_days AS integer)))"
)

SET_METADATA = text(
    f"UPDATE requests SET metadata = :metadata WHERE {OWN_CHAT} AND {RETAINED} RETURNING *"
).bindparams(bindparam("metadata", type_=JSONB))

# A batch line goes only once its batch has ended: its result file is written by then.
DELETE = text(
    f"""
UPDATE requests AS r
SET deleted_at = now(), body = '{{}}'::jsonb, response_body = NULL, metadata = NULL
WHERE {OWN_CHAT} AND {RETAINED}
  AND (batch_id IS NULL OR EXISTS (
        SELECT 1 FROM batches b WHERE b.id = r.batch_id AND b.status IN {sql_in(FINAL_BATCH)}))
RETURNING id
"""
)

Order = Literal["asc", "desc"]


def page_sql(order: Order, *, after: bool, model: bool, metadata: bool, retained: bool) -> str:
    """One page of a key's stored chat completions, ``limit`` rows at most, in ``order``."""
    cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
    where = [f"owner_key_id = :owner AND {STORED_CHAT}"]
    if after:
        # The cursor row is found whatever became of it since (deleted: its created_at stays).
        where.append(
            f"(created_at, id) {cmp} (SELECT created_at, id FROM requests"
            " WHERE id = :after AND owner_key_id = :owner)"
        )
    if model:
        where.append("model = :model")
    if metadata:
        where.append("coalesce(metadata, body -> 'metadata') @> :metadata")
    if retained:
        where.append("created_at >= now() - make_interval(days => :retention_days)")
    return (
        "SELECT * FROM requests WHERE "
        + " AND ".join(where)
        + f" ORDER BY created_at {direction}, id {direction} LIMIT :limit"
    )


_PAGES: dict[tuple[Order, bool, bool, bool, bool], TextClause] = {}


def page_query(
    order: Order, *, after: bool, model: bool, metadata: bool, retained: bool
) -> TextClause:
    """The statement of :func:`page_sql`, built once per shape (no OR on parameters, so
    every plan is the index range it looks like)."""
    shape = (order, after, model, metadata, retained)
    found = _PAGES.get(shape)
    if found is None:
        sql = page_sql(order, after=after, model=model, metadata=metadata, retained=retained)
        found = _PAGES[shape] = statement(sql, metadata=metadata)
    return found


def statement(sql: str, *, metadata: bool) -> TextClause:
    """``sql`` with its ``:metadata`` (if it has one) sent as jsonb."""
    found = text(sql)
    return found.bindparams(bindparam("metadata", type_=JSONB)) if metadata else found


class ChatCompletionStore:
    """Stored chat completions of a key: list, update metadata, delete."""

    def __init__(self, engine: AsyncEngine, *, retention_days: int | None = None) -> None:
        self.engine = engine
        self.retention_days = retention_days

    async def page(
        self,
        owner: str,
        *,
        order: Order,
        limit: int,
        after: str | None = None,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[RequestRow]:
        """Up to ``limit`` rows after the row ``after`` (an unknown id: none), in ``order``
        of creation; ``metadata``: only rows whose metadata holds every one of these pairs."""
        query = page_query(
            order,
            after=after is not None,
            model=model is not None,
            metadata=bool(metadata),
            retained=self.retention_days is not None,
        )
        params: dict[str, Any] = {"owner": owner, "limit": limit}
        if after is not None:
            params["after"] = after
        if model is not None:
            params["model"] = model
        if metadata:
            params["metadata"] = metadata
        if self.retention_days is not None:
            params["retention_days"] = self.retention_days
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query, params)).mappings()
            return [RequestRow.from_row(row) for row in rows]

    async def set_metadata(
        self, id: str, owner: str, metadata: dict[str, str]
    ) -> RequestRow | None:
        """Replace a completed chat completion's metadata; its row, or None if there is no
        such completion of ``owner``."""
        params = {
            "id": id,
            "owner": owner,
            "metadata": metadata,
            "retention_days": self.retention_days,
        }
        async with self.engine.connect() as conn:
            row = (await conn.execute(SET_METADATA, params)).mappings().first()
        return None if row is None else RequestRow.from_row(row)

    async def delete(self, id: str, owner: str) -> bool:
        """Delete a completed chat completion of ``owner``: False if there is none (or it is
        a line of a batch still running)."""
        params = {"id": id, "owner": owner, "retention_days": self.retention_days}
        async with self.engine.connect() as conn:
            return (await conn.execute(DELETE, params)).first() is not None
