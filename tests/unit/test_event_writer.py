"""The worker's event writer: numbered events stored in batches, never one write per event."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any, cast

from app.store.events import EventStore
from app.store.outcomes import Outcome
from app.store.requests import Finish
from app.vocabulary import Status
from tests.support.rows import claimed
from worker.streaming import EventWriter

CLAIMED = claimed(
    id="resp_1",
    attempts=1,
    endpoint="/v1/responses",
    body={"model": "m", "input": "hi"},
    service_tier="default",
    background=True,
    stream=True,
    created_at=dt.datetime(2026, 12, 6, tzinfo=dt.UTC),
)


class FakeStore:
    """Records each statement: (kind, the sequence numbers it stored)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, list[int]]] = []
        self.events: dict[int, dict[str, Any]] = {}
        self.appended = asyncio.Event()

    async def append(self, id: str, attempt: int, events: list[tuple[int, str]]) -> bool:
        await asyncio.sleep(0)
        self._keep("append", events)
        self.appended.set()
        return True

    async def finish(self, finish: Finish, events: list[tuple[int, str]]) -> bool:
        self._keep("finish", events)
        return True

    def _keep(self, kind: str, events: list[tuple[int, str]]) -> None:
        self.writes.append((kind, [seq for seq, _ in events]))
        self.events.update((seq, json.loads(data)) for seq, data in events)


def writer(store: FakeStore, **kwargs: Any) -> EventWriter:
    return EventWriter(cast(EventStore, store), CLAIMED, 2, **kwargs)


async def test_a_burst_is_stored_in_batches_of_flush_events():
    store = FakeStore()
    events = writer(store, flush_s=60.0, flush_events=64)
    events.begin()
    for i in range(149):
        events.add({"type": "response.output_text.delta", "delta": f"w{i}"})
        await asyncio.sleep(0)  # as between the upstream's chunks
    completed = Outcome(status=Status.COMPLETED, response_status=200, response_body={"output": []})
    assert await events.finish(completed)
    kinds = [kind for kind, _ in store.writes]
    # 151 events: a flush at each 64 (what arrives during one goes in the next), the rest
    # with the final status.
    assert kinds == ["append", "append", "finish"]
    stored = [seq for _, seqs in store.writes for seq in seqs]
    assert stored == list(range(2, 2 + 150 + 1))  # in order, each once, the terminal last
    assert all(len(seqs) >= 64 for _, seqs in store.writes[:-1])
    first, last = store.events[2], store.events[152]
    assert first["type"] == "response.in_progress" and first["response"]["id"] == "resp_1"
    assert last["type"] == "response.completed" and last["sequence_number"] == 152
    assert last["response"]["status"] == "completed" and last["response"]["background"] is True


async def test_a_slow_stream_is_flushed_after_flush_s():
    store = FakeStore()
    events = writer(store, flush_s=0.01, flush_events=64)
    events.add({"type": "response.output_text.delta", "delta": "one"})
    events.add({"type": "response.output_text.delta", "delta": "two"})
    await asyncio.wait_for(store.appended.wait(), 5)
    assert store.writes == [("append", [2, 3])]
    failed = Outcome(status=Status.FAILED, error={"code": "upstream_500", "message": "boom"})
    assert await events.finish(failed)
    assert store.writes[-1] == ("finish", [4])
    assert store.events[4]["type"] == "response.failed"
    assert store.events[4]["response"]["error"]["code"] == "server_error"


async def test_close_drops_what_is_pending():
    store = FakeStore()
    events = writer(store, flush_s=0.01, flush_events=64)
    events.add({"type": "response.output_text.delta", "delta": "lost"})
    events.close()
    await asyncio.sleep(0.05)
    assert store.writes == []
