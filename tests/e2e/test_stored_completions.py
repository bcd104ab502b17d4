"""OpenAI's stored chat completions API through the official SDK: ``chat.completions.list``
(model and metadata filters, pages with ``after``, both orders), ``retrieve``, ``update``,
``messages.list`` and ``delete``, over completions of every tier (realtime, flex, a Batch API
line); every object validated by the SDK's own types. A second key sees none of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionDeleted, ChatCompletionStoreMessage

from app.testing.processes import Gateway
from tests.e2e.conftest import row
from tests.e2e.test_batches import results, wait_for
from tests.support.batches import chat_line, start_batch

USER = {"role": "user", "content": "hello stored"}


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=60)


def raw_get(gateway: Gateway, key: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.api}{path}", params=params, headers={"Authorization": f"Bearer {key}"}
    )


def completion(raw: dict[str, Any]) -> ChatCompletion:
    """A ChatCompletion as sent, validated by the SDK's type (a missing or mistyped field
    fails), with its metadata always an object."""
    assert isinstance(raw["metadata"], dict)
    return ChatCompletion.model_validate(raw)


def store_message(raw: dict[str, Any]) -> ChatCompletionStoreMessage:
    """A stored message validated by the SDK's type. The SDK's ``role`` is only
    ``"assistant"`` (it reuses the answer's message type), while OpenAI's own example lists the
    request's user messages: every other field is validated as sent."""
    assert {"id", "role", "content", "name", "content_parts"} <= raw.keys()
    return ChatCompletionStoreMessage.model_validate({**raw, "role": "assistant"})


def by_id(client: openai.OpenAI, target: str) -> list[Callable[[], object]]:
    """Every call of the API that names a stored completion by id."""
    return [
        lambda: client.chat.completions.retrieve(target),
        lambda: client.chat.completions.update(target, metadata={"x": "y"}),
        lambda: client.chat.completions.messages.list(target),
        lambda: client.chat.completions.delete(target),
    ]


@pytest.fixture(scope="module")
def made(client: openai.OpenAI, db: psycopg.Connection) -> dict[str, Any]:
    """Completions of key ``alice`` on every tier; returns their ids by kind."""
    realtime = [
        client.chat.completions.create(
            model="remote", messages=[USER], metadata={"run": "s", "n": str(i)}
        ).id
        for i in range(3)
    ]
    flex = client.chat.completions.create(
        model="remote",
        messages=[{"role": "system", "content": "be brief"}, USER],
        service_tier="flex",
        metadata={"run": "s", "tier": "flex"},
    )
    assert flex.service_tier == "flex"
    parts = client.chat.completions.create(
        model="mock",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}],
            }
        ],
    ).id
    batch = start_batch(client, [chat_line("line-1", "from a batch")])
    batch = wait_for(client, batch.id)
    assert batch.status == "completed"
    (line,) = results(client, batch.output_file_id)
    unstored = client.chat.completions.create(model="remote", messages=[USER], store=False).id
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="remote", messages=[{"role": "user", "content": "mock:status=400"}]
        )
    failed = db.execute(
        "SELECT id FROM requests WHERE status = 'failed' AND endpoint = '/v1/chat/completions'"
    ).fetchone()
    assert failed is not None
    return {
        "realtime": realtime,
        "flex": flex.id,
        "parts": parts,
        "line": line["response"]["request_id"],
        "unstored": unstored,
        "failed": failed[0],
    }


def stored_order(db: psycopg.Connection, key_name: str) -> list[str]:
    """The key's listed completions in SQL, oldest first (what the list must page through)."""
    return [
        r[0]
        for r in db.execute(
            "SELECT r.id FROM requests r JOIN api_keys k ON k.id = r.owner_key_id"
            " WHERE k.name = %s AND r.endpoint = '/v1/chat/completions'"
            " AND r.status = 'completed' AND r.deleted_at IS NULL"
            " AND coalesce(r.body ->> 'store', '') <> 'false'"
            " ORDER BY r.created_at, r.id",
            (key_name,),
        )
    ]


def test_list_pages_filters_and_orders(
    client: openai.OpenAI, gateway: Gateway, key: str, db: psycopg.Connection, made: dict
):
    expected = stored_order(db, "alice")
    kinds = [*made["realtime"], made["flex"], made["parts"], made["line"]]
    assert sorted(expected) == sorted(kinds)  # not the store=false one, not the failed one

    # pages of 2, the SDK following `after` by itself; oldest first by default (OpenAI's)
    paged = list(client.chat.completions.list(limit=2))
    assert [c.id for c in paged] == expected
    assert [c.id for c in client.chat.completions.list(order="desc")] == expected[::-1]
    first = client.chat.completions.list(limit=2)
    assert first.has_more and len(first.data) == 2
    second = client.chat.completions.list(limit=2, after=first.data[-1].id)
    assert [c.id for c in second.data] == expected[2:4]
    last = client.chat.completions.list(limit=2, order="desc", after=expected[1])
    assert [c.id for c in last.data] == expected[:1] and not last.has_more

    # as sent: OpenAI's list object, each item a ChatCompletion the SDK's type accepts
    page = raw_get(gateway, key, "/chat/completions", limit=100).json()
    assert page.keys() == {"object", "data", "first_id", "last_id", "has_more"}
    assert page["object"] == "list" and page["has_more"] is False
    assert (page["first_id"], page["last_id"]) == (expected[0], expected[-1])
    listed = {c["id"]: completion(c) for c in page["data"]}
    assert all(c.object == "chat.completion" for c in listed.values())
    assert listed[made["flex"]].service_tier == "flex"
    assert listed[made["realtime"][0]].model == "remote"  # as asked, not "remote-upstream"
    assert listed[made["realtime"][0]].metadata == {"run": "s", "n": "0"}
    assert listed[made["parts"]].metadata == {}

    # filters: the model as the client named it; every metadata pair given must match
    assert [c.id for c in client.chat.completions.list(model="mock")] == [made["parts"]]
    assert client.chat.completions.list(model="remote-upstream").data == []
    tagged = client.chat.completions.list(metadata={"run": "s"})
    assert [c.id for c in tagged] == [i for i in expected if i in {*made["realtime"], made["flex"]}]
    both = client.chat.completions.list(metadata={"run": "s", "tier": "flex"})
    assert [c.id for c in both] == [made["flex"]]
    assert client.chat.completions.list(metadata={"run": "s", "tier": "realtime"}).data == []

    # empty page: nulls, as OpenAI's list object allows
    none = raw_get(gateway, key, "/chat/completions", model="nothing").json()
    assert none == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_retrieve_and_messages(client: openai.OpenAI, gateway: Gateway, key: str, made: dict):
    flex_id = made["flex"]
    raw = raw_get(gateway, key, f"/chat/completions/{flex_id}").json()
    found = completion(raw)
    assert found.id == flex_id and found.service_tier == "flex"
    assert found.metadata == {"run": "s", "tier": "flex"}
    assert client.chat.completions.retrieve(flex_id).model_dump() == found.model_dump()
    line = client.chat.completions.retrieve(made["line"])  # a Batch API line, by its id
    assert line.id == made["line"] and line.model == "remote"
    # store=false keeps a completion out of the list, not out of its own id
    assert client.chat.completions.retrieve(made["unstored"]).id == made["unstored"]

    messages = client.chat.completions.messages.list(flex_id)
    assert [m.id for m in messages.data] == [f"{flex_id}-0", f"{flex_id}-1"]
    raw = raw_get(gateway, key, f"/chat/completions/{flex_id}/messages").json()
    assert raw["first_id"] == f"{flex_id}-0" and raw["last_id"] == f"{flex_id}-1"
    assert raw["has_more"] is False
    assert [m["role"] for m in raw["data"]] == ["system", "user"]
    assert [store_message(m).content for m in raw["data"]] == ["be brief", "hello stored"]
    assert all(m["name"] is None and m["content_parts"] is None for m in raw["data"])
    paged = client.chat.completions.messages.list(flex_id, limit=1)
    assert [m.id for m in paged] == [f"{flex_id}-0", f"{flex_id}-1"]  # `after` by the SDK
    newest = client.chat.completions.messages.list(flex_id, order="desc", limit=1)
    assert [m.id for m in newest.data] == [f"{flex_id}-1"] and newest.has_more
    after = client.chat.completions.messages.list(flex_id, order="desc", after=f"{flex_id}-1")
    assert [m.id for m in after.data] == [f"{flex_id}-0"] and not after.has_more

    parts = raw_get(gateway, key, f"/chat/completions/{made['parts']}/messages").json()["data"]
    (message,) = parts
    stored = store_message(message)
    assert stored.content == "two parts"
    assert [p.text for p in stored.content_parts or [] if p.type == "text"] == ["two ", "parts"]


def test_update_metadata(client: openai.OpenAI, gateway: Gateway, key: str, made: dict):
    target = made["realtime"][1]
    updated = client.chat.completions.with_raw_response.update(target, metadata={"run": "t"})
    assert completion(json.loads(updated.text)).metadata == {"run": "t"}
    assert client.chat.completions.retrieve(target).metadata == {"run": "t"}
    assert [c.id for c in client.chat.completions.list(metadata={"run": "t"})] == [target]
    assert target not in {c.id for c in client.chat.completions.list(metadata={"run": "s"})}
    assert client.chat.completions.update(target, metadata=None).metadata == {}
    restored = client.chat.completions.update(target, metadata={"run": "s", "n": "1"})
    assert restored.metadata == {"run": "s", "n": "1"}


def test_delete(
    client: openai.OpenAI, gateway: Gateway, key: str, db: psycopg.Connection, made: dict
):
    target = made["realtime"][2]
    tokens = row(db, target)["total_tokens"]
    raw = client.chat.completions.with_raw_response.delete(target)
    deleted = ChatCompletionDeleted.model_validate(json.loads(raw.text))
    assert deleted == ChatCompletionDeleted(
        id=target, object="chat.completion.deleted", deleted=True
    )
    for call in (
        *by_id(client, target),
        lambda: client.responses.retrieve(target),
        lambda: client.responses.delete(target),
    ):
        with pytest.raises(openai.NotFoundError) as gone:
            call()
        assert gone.value.code == "not_found"
    assert target not in {c.id for c in client.chat.completions.list()}
    # the admin's row: stamped, request and answer cleared, usage kept for the reports
    kept = row(db, target)
    assert kept["deleted_at"] is not None and kept["status"] == "completed"
    assert (kept["body"], kept["response_body"], kept["metadata"]) == ({}, None, None)
    assert kept["total_tokens"] == tokens and tokens


def test_unfinished_and_failed_are_not_stored_completions(client: openai.OpenAI, made: dict):
    failed = made["failed"]
    for call in by_id(client, failed):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.code == "not_ready"
    assert failed not in {c.id for c in client.chat.completions.list()}


def test_another_key_sees_none_of_them(gateway: Gateway, other_key: str, made: dict):
    bob = sdk(gateway, other_key)
    ids = [*made["realtime"][:2], made["flex"], made["parts"], made["line"], made["unstored"]]
    for target in ids:
        for call in by_id(bob, target):
            with pytest.raises(openai.NotFoundError) as missing:
                call()
            assert missing.value.code == "not_found"
    assert bob.chat.completions.list().data == []
    assert bob.chat.completions.list(after=made["flex"]).data == []
    mine = bob.chat.completions.create(model="remote", messages=[USER])
    assert [c.id for c in bob.chat.completions.list()] == [mine.id]


BAD_LISTS = [
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"order": "sideways"}, "order"),
    ({"after": "no such id!"}, "after"),
    ({"model": "a\x00b"}, "model"),
    ({"metadata": "run"}, "metadata"),
    ({"metadata[" + "k" * 65 + "]": "v"}, "metadata"),
    ({"metadata[k]": "v" * 513}, "metadata"),
    ({f"metadata[k{i}]": "v" for i in range(17)}, "metadata"),
    ({"metadata[k]": ["a", "b"]}, "metadata"),  # one key twice
]


@pytest.mark.parametrize(("params", "param"), BAD_LISTS)
def test_bad_list_params_are_400_naming_them(
    gateway: Gateway, key: str, params: dict[str, Any], param: str
):
    answer = raw_get(gateway, key, "/chat/completions", **params)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_bad_messages_params_and_updates_are_400(
    client: openai.OpenAI, gateway: Gateway, key: str, made: dict
):
    flex_id = made["flex"]
    for params, param in [
        ({"after": f"{flex_id}-2"}, "after"),  # it has two messages
        ({"after": "chatcmpl-other-0"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"order": "up"}, "order"),
    ]:
        answer = raw_get(gateway, key, f"/chat/completions/{flex_id}/messages", **params)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param

    too_many = {f"k{i}": "v" for i in range(17)}
    url = f"{gateway.api}/chat/completions/{flex_id}"
    auth = {"Authorization": f"Bearer {key}"}
    for body, param in [
        ({"metadata": too_many}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": "run"}, "metadata"),
        ({}, "metadata"),
        ({"metadata": {}, "model": "other"}, "model"),
        ([], None),
    ]:
        answer = httpx.post(url, json=body, headers=auth)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == param, body
    answer = httpx.post(url, content=b"{not json", headers=auth)
    assert answer.status_code == 400
    assert client.chat.completions.retrieve(flex_id).metadata == {"run": "s", "tier": "flex"}
