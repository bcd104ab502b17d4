"""What the webhook outbox's triggers cost where calls end (docs/webhooks.md, "Cost").

On a throw-away embedded PostgreSQL, with the statements the code runs:
- the flex/background completion path: background Responses submitted and claimed
  (``RequestStore``), then their outcomes stored by ``finish_many`` in chunks of 50, as the
  flex dispatcher's group commit does; per row, in four states: triggers disabled (the code
  before migration 0021), no endpoint, only another key's endpoint, a matching endpoint
  (one delivery row written per event);
- the realtime path: whole realtime rows written final by ``RealtimeTracker.track`` in
  chunks of 50 (the gateway's group commit), triggers disabled and enabled with endpoints.

Rounds alternate the states so that drift hits all of them alike; the median is printed.

Usage: python bench/webhook_outbox.py [--rows 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from app.ids import new_id, request_id
from app.openai.webhooks import new_secret
from app.store.db import create_engine
from app.store.keys import KeyStore
from app.store.outcomes import Outcome
from app.store.realtime import RealtimeStart, RealtimeTracker, RealtimeWhole
from app.store.requests import Finish, RequestStore, Submission
from app.store.webhooks import WebhookStore
from app.testing.postgres import database_server
from app.token_usage import TokenUsage
from app.vocabulary import Endpoint, Status, Tier

CHUNK = 50
TRIGGERS = ("requests_webhook_on_update", "requests_webhook_on_insert")
BODY = {
    "id": "resp_x",
    "object": "response",
    "status": "completed",
    "output": [{"type": "message", "content": [{"type": "output_text", "text": "echo " * 40}]}],
}


def outcome() -> Outcome:
    return Outcome(
        status=Status.COMPLETED,
        response_status=200,
        response_body=BODY,
        usage=TokenUsage(input=10, output=40, total=50),
    )


async def set_triggers(store: RequestStore, on: bool) -> None:
    async with store.engine.connect() as conn:
        for name in TRIGGERS:
            verb = "ENABLE" if on else "DISABLE"
            await conn.execute(text(f"ALTER TABLE requests {verb} TRIGGER {name}"))


async def completion_ms_per_row(store: RequestStore, owner: str, rows: int) -> float:
    subs = [
        Submission(
            id=request_id(Endpoint.RESPONSES),
            owner=owner,
            endpoint=Endpoint.RESPONSES,
            model="mock",
            stream=False,
            body={"model": "mock", "input": "hi"},
            tier=Tier.FLEX,
            background=True,
            window_s=3600,
            priority=0,
        )
        for _ in range(rows)
    ]
    for start in range(0, rows, 500):
        await store.submit_many(subs[start : start + 500])
    claimed = []
    while len(claimed) < rows:
        claimed += await store.claim({"mock": rows - len(claimed)}, "bench")
    finishes = [Finish(c.id, c.attempts, outcome()) for c in claimed]
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        stored = await store.finish_many(finishes[start : start + CHUNK])
        assert len(stored) == len(finishes[start : start + CHUNK])
    return (time.perf_counter() - started) * 1000 / rows


async def realtime_ms_per_row(tracker: RealtimeTracker, owner: str, rows: int) -> float:
    now = dt.datetime.now(dt.UTC)
    items = [
        RealtimeWhole(
            start=RealtimeStart(
                id=request_id(Endpoint.RESPONSES),
                owner=owner,
                endpoint=Endpoint.RESPONSES,
                model="mock",
                stream=False,
                body={"model": "mock", "input": "hi"},
                at=now,
            ),
            outcome=outcome(),
        )
        for _ in range(rows)
    ]
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        await tracker.track(list(items[start : start + CHUNK]))
    return (time.perf_counter() - started) * 1000 / rows


async def run(url: str, rows: int, rounds: int) -> None:
    from app.store.dburl import DatabaseURL

    engine = create_engine(DatabaseURL.parse(url), pool_size=2, max_overflow=0)
    store = RequestStore(engine)
    tracker = RealtimeTracker(engine)
    keys = KeyStore(engine)
    hooks = WebhookStore(engine)
    alice, _ = await keys.create("alice", None)
    bob, _ = await keys.create("bob", None)
    results: dict[str, list[float]] = {}

    async def endpoints(*owners: str) -> None:
        async with engine.connect() as conn:
            await conn.execute(text("DELETE FROM webhook_endpoints"))
        for owner in owners:
            await hooks.create(
                owner, f"https://{new_id('h')}.example/", ["response.completed"], new_secret()
            )

    states = {
        "triggers off (before 0021)": (False, ()),
        "no endpoint": (True, ()),
        "another key's endpoint": (True, (bob.id,)),
        "matching endpoint (writes 1 delivery)": (True, (alice.id,)),
    }
    await completion_ms_per_row(store, alice.id, 200)  # warm up
    await realtime_ms_per_row(tracker, alice.id, 200)
    for _ in range(rounds):
        for name, (on, owners) in states.items():
            await set_triggers(store, on)
            await endpoints(*owners)
            ms = await completion_ms_per_row(store, alice.id, rows)
            results.setdefault(f"background completion, {name}", []).append(ms)
        for name, on in (("triggers off", False), ("triggers on, endpoints exist", True)):
            await set_triggers(store, on)
            await endpoints(alice.id, bob.id)
            ms = await realtime_ms_per_row(tracker, alice.id, rows)
            results.setdefault(f"realtime rows written, {name}", []).append(ms)
    await set_triggers(store, True)
    await tracker.release()
    await engine.dispose()
    print(f"{rows} rows per round, {rounds} rounds, chunks of {CHUNK}; ms per row (median, range)")
    for name, values in results.items():
        print(
            f"  {name:<62} {statistics.median(values):.4f}  ({min(values):.4f}-{max(values):.4f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with database_server(Path(tempfile.mkdtemp(prefix="tiergate-bench-")) / "home") as factory:
        asyncio.run(run(factory.create().libpq(), args.rows, args.rounds))


if __name__ == "__main__":
    main()
