"""Readers of a background Response's event stream: stored events replayed, then followed.

``POST /v1/responses`` with ``background`` and ``stream`` and ``GET /v1/responses/{id}?
stream=true&starting_after=N`` both end here. A reader reads the events after the last one
it sent, sends them, and sleeps until the LISTEN hub wakes it (one NOTIFY per flush of the
worker, or the request ending); no reader polls the database, though one that heard nothing
for ``recheck_s`` reads again as a safety net. Keep-alive comments go out while it waits.

A request whose events were not stored (created without ``stream``) is replayed from the
stored object once final (``app/openai/replay.py``). A final row whose terminal event was not
stored (cancelled, expired, ...) gets one built from the row (``stored_events.py``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from app.gateway.waiters import WaiterHub
from app.openai.objects import response_object
from app.openai.replay import KEEP_ALIVE, response_events
from app.openai.stored_events import TERMINAL_TYPES, dumps, frame, terminal_event
from app.store.events import EventStore
from app.store.requests import RequestStore
from app.vocabulary import FINAL, RequestErrorCode

# A reader that heard nothing for this long reads again (a lost notification).
RECHECK_S = 30.0


class EventStreams:
    """Serves stored event streams to any number of readers per process."""

    def __init__(
        self,
        *,
        events: EventStore,
        requests: RequestStore,
        hub: WaiterHub,
        keepalive_s: float,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.events = events
        self.requests = requests
        self.hub = hub
        self.keepalive_s = keepalive_s
        self.recheck_s = recheck_s

    async def follow(
        self, rid: str, owner: str, after: int, *, opening: tuple[bytes, ...] = ()
    ) -> AsyncIterator[bytes]:
        """The events after ``after`` until the terminal one (``opening``: frames the
        caller knows already, sent first)."""
        async with self.hub.follower(rid) as woken:
            for part in opening:
                yield part
            while True:
                woken.clear()  # before the read: a flush after it wakes us again
                page = await self.events.after(rid, after)
                for event in page.events:
                    yield frame(event.type, event.data)
                    after = event.sequence_number
                    if event.type in TERMINAL_TYPES:
                        return
                if page.full:
                    continue
                if page.status in FINAL:
                    if page.last_type not in TERMINAL_TYPES:
                        async for part in self._ending(rid, owner, after, page.last_seq):
                            yield part
                    return
                if page.status is None:
                    yield _gone(rid, after + 1)
                    return
                waited = 0.0
                while not woken.is_set() and waited < self.recheck_s:
                    try:
                        await asyncio.wait_for(woken.wait(), self.keepalive_s)
                    except TimeoutError:
                        yield KEEP_ALIVE
                        waited += self.keepalive_s

    async def _ending(
        self, rid: str, owner: str, after: int, last_seq: int | None
    ) -> AsyncIterator[bytes]:
        """The end of a final request's stream whose terminal event is not stored, built
        from its row: after the last stored event, or the whole stream if none is."""
        row = await self.requests.get(rid, owner)
        if row is None:
            yield _gone(rid, after + 1)
            return
        response = response_object(row)
        if last_seq is not None:
            if after <= last_seq:
                event = terminal_event(response, last_seq + 1)
                yield frame(event["type"], dumps(event))
            return
        # Never streamed: the stored object as OpenAI would have streamed it.
        for part in itertools.islice(response_events(response), after + 1, None):
            yield part


def _gone(rid: str, seq: int) -> bytes:
    event = {
        "type": "error",
        "code": RequestErrorCode.NOT_FOUND,
        "message": f"Response {rid} was deleted.",
        "param": None,
        "sequence_number": seq,
    }
    return frame("error", dumps(event))
