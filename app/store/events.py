"""SQL for the stored events of streamed background Responses (``response_events``).

The gateway stores a stream's first two events (``response.created``, ``response.queued``)
in the statement that accepts the request (``requests.SUBMIT_MANY``). A worker appends the
events of its attempt in batches, one statement per flush, each guarded by the row's status
and attempt number (``FOR SHARE``: a flush and a cancel are serialised, so no event is
stored after the row became final) and each sending one ``NOTIFY tiergate_events``. The
last batch is written with the final status in one statement: a crash never loses the final
event. Readers resume with ``sequence_number > N`` on the primary key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.outcomes import STORE_OUTCOMES, stored_arrays
from app.store.requests import Finish
from app.vocabulary import Channel, Status

# One flush of a running attempt: stored only while the row is still that attempt's.
APPEND = text(
    f"""
WITH live AS (
    SELECT id FROM requests
    WHERE id = :id AND status = '{Status.IN_PROGRESS}' AND attempts = :attempt
    FOR SHARE
), stored AS (
    INSERT INTO response_events (response_id, sequence_number, event)
    SELECT live.id, e.seq, CAST(e.event AS jsonb)
    FROM live, unnest(CAST(:seqs AS int[]), CAST(:events AS text[])) AS e(seq, event)
)
SELECT pg_notify('{Channel.EVENTS}', id) FROM live
"""
)

# The last events and the final status of one attempt, together (or neither).
FINISH = text(
    f"""
WITH done AS ({STORE_OUTCOMES} RETURNING r.id), stored AS (
    INSERT INTO response_events (response_id, sequence_number, event)
    SELECT done.id, e.seq, CAST(e.event AS jsonb)
    FROM done, unnest(CAST(:seqs AS int[]), CAST(:events AS text[])) AS e(seq, event)
)
SELECT id, pg_notify('{Channel.DONE}', id), pg_notify('{Channel.EVENTS}', id) FROM done
"""
)

LAST = text("SELECT max(sequence_number) FROM response_events WHERE response_id = :id")

# What a follower reads on each wake-up, in one snapshot: the row's status (all of its
# events are visible once it is final) and the events after ``after``.
AFTER = text(
    """
SELECT r.status, last.sequence_number AS last_seq, last.event->>'type' AS last_type,
       e.sequence_number, e.type, e.data
FROM requests r LEFT JOIN LATERAL (
    SELECT sequence_number, event FROM response_events WHERE response_id = r.id
    ORDER BY sequence_number DESC LIMIT 1
) last ON true
LEFT JOIN LATERAL (
    SELECT sequence_number, event->>'type' AS type, CAST(event AS text) AS data
    FROM response_events WHERE response_id = r.id AND sequence_number > :after
    ORDER BY sequence_number LIMIT :limit
) e ON true
WHERE r.id = :id
ORDER BY e.sequence_number
"""
)

# Events read per query (a reader far behind reads again at once).
PAGE = 1000


@dataclass(frozen=True)
class StoredEvent:
    sequence_number: int
    type: str
    data: str  # the event's JSON


@dataclass(frozen=True)
class EventsPage:
    """A follower's read: ``status`` None when the request is gone; the last stored
    event's number and type (None when none is stored)."""

    status: str | None
    last_seq: int | None
    last_type: str | None
    events: list[StoredEvent]
    full: bool  # PAGE events came: more may wait


class EventStore:
    """Appends and reads the stored events of streamed background Responses."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.writes = 0  # statements that stored events (this process)

    async def last(self, id: str) -> int:
        """The last stored sequence number (-1 if none)."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(LAST, {"id": id})).scalar()
        return -1 if found is None else int(found)

    async def append(self, id: str, attempt: int, events: list[tuple[int, str]]) -> bool:
        """Store a batch of a running attempt; False when the row moved on (cancelled,
        deleted, taken over by another attempt): nothing was stored."""
        params = {
            "id": id,
            "attempt": attempt,
            "seqs": [s for s, _ in events],
            "events": [e for _, e in events],
        }
        async with self.engine.connect() as conn:
            stored = (await conn.execute(APPEND, params)).first() is not None
        self.writes += 1
        return stored

    async def finish(self, finish: Finish, events: list[tuple[int, str]]) -> bool:
        """Store the attempt's outcome with its last events; False when the row moved on."""
        params = {
            "ids": [finish.id],
            "attempts": [finish.attempt],
            **stored_arrays([finish.outcome]),
            "seqs": [s for s, _ in events],
            "events": [e for _, e in events],
        }
        async with self.engine.connect() as conn:
            stored = (await conn.execute(FINISH, params)).first() is not None
        self.writes += 1
        return stored

    async def after(self, id: str, after: int) -> EventsPage:
        """The request's status and its events after ``after``, in one snapshot."""
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(AFTER, {"id": id, "after": after, "limit": PAGE}))
        if not rows:
            return EventsPage(None, None, None, [], False)
        events = [
            StoredEvent(r.sequence_number, r.type, r.data)
            for r in rows
            if r.sequence_number is not None
        ]
        first = rows[0]
        return EventsPage(
            first.status, first.last_seq, first.last_type, events, len(events) >= PAGE
        )
