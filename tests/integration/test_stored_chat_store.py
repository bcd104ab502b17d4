"""The stored chat completions' SQL (``app/store/chat_completions.py``) on a real database:
which rows a key lists, keyset pages in both orders, the filters, metadata updates, soft
deletion, and a plan that is one range of ``requests_stored_chat_idx`` (no scan, no sort)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from app.ids import request_id
from app.keys import ApiKey
from app.store.chat_completions import ChatCompletionStore, page_sql, statement
from app.store.keys import KeyStore
from app.store.requests import RequestStore
from app.vocabulary import Endpoint, Status

CHAT = str(Endpoint.CHAT)

INSERT = text(
    """
INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, status, body,
                      response_body, created_at, finished_at)
VALUES (:id, :owner, :endpoint, :model, 'default', :status, CAST(:body AS jsonb),
        CAST(:answer AS jsonb), now() - make_interval(secs => :ago), now())
"""
)


async def insert(
    engine: Any,
    owner: ApiKey,
    *,
    ago: float,
    model: str = "m1",
    status: str = Status.COMPLETED,
    endpoint: str = CHAT,
    **request: Any,
) -> str:
    rid = request_id(endpoint)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **request}
    answer = {"id": "up", "object": "chat.completion", "created": 1, "model": model}
    params = {
        "id": rid,
        "owner": owner.id,
        "endpoint": endpoint,
        "model": model,
        "status": status,
        "body": json.dumps(body),
        "answer": json.dumps(answer) if status == Status.COMPLETED else None,
        "ago": ago,
    }
    async with engine.connect() as conn:
        await conn.execute(INSERT, params)
    return rid


async def all_pages(chats: ChatCompletionStore, owner: ApiKey, **query: Any) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        rows = await chats.page(owner.id, limit=3, after=after, **query)
        ids += [row.id for row in rows]
        if len(rows) < 3:
            return ids
        after = rows[-1].id


async def test_lists_pages_filters_updates_and_deletes(engine, owner: ApiKey):
    chats = ChatCompletionStore(engine)
    other, _ = await KeyStore(engine).create("stored-chat-other", None)
    listed = [
        await insert(engine, owner, ago=100 - i, model="m2" if i % 3 == 0 else "m1")
        for i in range(8)
    ]
    tagged = await insert(engine, owner, ago=50, metadata={"team": "a", "run": "1"})
    listed.append(tagged)
    await insert(engine, owner, ago=40, status=Status.FAILED)
    await insert(engine, owner, ago=40, status=Status.IN_PROGRESS)
    await insert(engine, owner, ago=40, endpoint=str(Endpoint.RESPONSES))
    unstored = await insert(engine, owner, ago=40, store=False)
    await insert(engine, other, ago=40)

    assert await all_pages(chats, owner, order="asc") == listed
    assert await all_pages(chats, owner, order="desc") == listed[::-1]
    assert await all_pages(chats, owner, order="asc", model="m2") == listed[0:8:3]
    assert [r.id for r in await chats.page(owner.id, order="asc", limit=9, metadata={})] == listed
    found = await chats.page(owner.id, order="asc", limit=9, metadata={"team": "a"})
    assert [r.id for r in found] == [tagged]
    assert await chats.page(owner.id, order="asc", limit=9, metadata={"team": "b"}) == []
    assert await chats.page(owner.id, order="asc", limit=9, after="chatcmpl-unknown") == []
    assert len(await chats.page(other.id, order="asc", limit=9)) == 1  # its own only
    assert await chats.page(other.id, order="asc", limit=9, after=listed[0]) == []  # not its id

    # metadata: replaced in its own column; the request body stays as it was sent
    updated = await chats.set_metadata(listed[0], owner.id, {"team": "b"})
    assert updated is not None and updated.metadata == {"team": "b"}
    assert "metadata" not in updated.body
    found = await chats.page(owner.id, order="asc", limit=9, metadata={"team": "b"})
    assert [r.id for r in found] == [listed[0]]
    assert await chats.set_metadata(listed[0], other.id, {}) is None  # not the other key's
    assert await chats.set_metadata(unstored, owner.id, {"x": "y"}) is not None  # by id: yes

    # deletion: gone for its key everywhere, the row kept for usage with nothing of its text
    assert not await chats.delete(listed[1], other.id)
    assert await chats.delete(listed[1], owner.id)
    assert not await chats.delete(listed[1], owner.id)
    assert await RequestStore(engine).get(listed[1], owner.id) is None
    assert not await RequestStore(engine).delete(listed[1], owner.id)
    assert await chats.set_metadata(listed[1], owner.id, {}) is None
    remaining = [listed[0], *listed[2:]]
    assert await all_pages(chats, owner, order="asc") == remaining
    # a page after a deleted row goes on from where it was
    after_deleted = await chats.page(owner.id, order="asc", limit=2, after=listed[1])
    assert [r.id for r in after_deleted] == listed[2:4]
    async with engine.connect() as conn:
        kept = (
            await conn.execute(
                text(
                    "SELECT body, response_body, metadata, deleted_at IS NOT NULL AS deleted,"
                    " model, status FROM requests WHERE id = :id"
                ),
                {"id": listed[1]},
            )
        ).one()
    assert (kept.body, kept.response_body, kept.metadata) == ({}, None, None)
    assert kept.deleted and kept.status == Status.COMPLETED


async def test_a_page_is_one_range_of_the_partial_index(engine, owner: ApiKey):
    """Among 20,000 rows of 20 other keys (their chat completions), and the key's own failed
    calls and Responses, every shape of the page query reads ``requests_stored_chat_idx``;
    unfiltered pages read it in order and stop at the limit (``EXPLAIN``)."""
    others = [(await KeyStore(engine).create(f"stored-chat-noise-{i}", None))[0] for i in range(20)]
    noise = text(
        """
INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, status, body, created_at)
SELECT 'noise-' || g, (CAST(:others AS text[]))[1 + g % 20], '/v1/chat/completions', 'm1',
       'default', 'completed', '{}'::jsonb, now() - make_interval(secs => g)
FROM generate_series(1, 20000) AS g
UNION ALL
SELECT 'own-' || g, :owner,
       CASE WHEN g % 2 = 0 THEN '/v1/responses' ELSE '/v1/chat/completions' END, 'm1',
       'default', CASE WHEN g % 2 = 0 THEN 'completed' ELSE 'failed' END, '{}'::jsonb,
       now() - make_interval(secs => g)
FROM generate_series(1, 1000) AS g
"""
    )
    async with engine.connect() as conn:
        await conn.execute(noise, {"owner": owner.id, "others": [k.id for k in others]})
    rows = [await insert(engine, owner, ago=i, metadata={"k": "v"}) for i in range(200)]
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE requests"))
        for order in ("asc", "desc"):
            for after, filtered, retained in [
                (False, False, False),
                (True, False, False),
                (True, True, False),
                (False, False, True),
                (True, True, True),
            ]:
                sql = page_sql(
                    order, after=after, model=filtered, metadata=filtered, retained=retained
                )
                params = {
                    "owner": owner.id,
                    "limit": 21,
                    "after": rows[100],
                    "model": "m1",
                    "metadata": {"k": "v"},
                    "retention_days": 30,
                }
                explain = statement("EXPLAIN " + sql, metadata=filtered)
                plan = "\n".join((await conn.execute(explain, params)).scalars())
                assert "Seq Scan" not in plan, plan
                if not filtered:  # the page is the index's order: read 21 entries, stop
                    assert "Index Scan using requests_stored_chat_idx" in plan or (
                        "Index Scan Backward using requests_stored_chat_idx" in plan
                    ), plan
                    assert plan.splitlines()[0].startswith("Limit"), plan
                    assert "Sort" not in plan and "Bitmap" not in plan, plan
                else:
                    # A model and metadata filter the planner deems selective may be read as
                    # a bitmap of the key's range after the cursor, then sorted: still a range
                    # of the key's rows (this index, or the key's index of every request).
                    assert "requests_stored_chat_idx" in plan or (
                        "requests_owner_created_idx" in plan
                    ), plan
