"""The rest of OpenAI's surface, through the official SDK, each object validated by the SDK's
own type (a missing or mistyped field fails): ``models.retrieve``, file lists in either order,
``expires_after`` on uploads, the Batch's ``model``, Response errors by OpenAI's codes (none on a
cancelled Response), ``logprobs`` on output text, token-array embedding input."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import yaml
from openai.types import Batch, CreateEmbeddingResponse, FileObject, Model
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, create_key
from tests.e2e.test_batches import wait_for
from tests.support.batches import chat_line, jsonl, start_batch, upload
from tests.support.waiting import wait_until

SLASHED = "org/model-x"  # model names may hold slashes (the SDK sends them as %2F)
HOUR = 3600


@pytest.fixture(scope="module")
def gateway_config(gateway_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared test config, plus a model whose name holds a slash."""
    data = yaml.safe_load(gateway_config.read_text())
    remote = next(m for m in data["models"] if m["name"] == "remote")
    models = [*data["models"], {"name": SLASHED, "upstream": remote["upstream"]}]
    return write_config(
        tmp_path_factory.mktemp("surface-config") / "tiergate.yaml", models, data["limits"]
    )


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=60)


def raw_json(call: Any) -> dict[str, Any]:
    """The JSON body of a ``with_raw_response`` call, as sent (not filled in by the SDK)."""
    body: dict[str, Any] = json.loads(call.text)
    return body


# --- GET /v1/models/{id} ---------------------------------------------------------------------


def test_models_retrieve(client: openai.OpenAI, gateway: Gateway, database: DatabaseURL, key: str):
    listed = list(client.models.list())
    assert {m.id for m in listed} == {"mock", "remote", "other", "slow-batch", SLASHED}
    for model in listed:
        found = raw_json(client.models.with_raw_response.retrieve(model.id))
        assert Model.model_validate(found) == model
    assert client.models.retrieve(SLASHED).id == SLASHED
    unencoded = httpx.get(
        f"{gateway.api}/models/{SLASHED}", headers={"Authorization": f"Bearer {key}"}
    )
    assert unencoded.status_code == 200 and unencoded.json()["id"] == SLASHED

    limited = sdk(gateway, create_key(database.libpq(), "models-limited", "mock"))
    assert limited.models.retrieve("mock").id == "mock"
    for name in ("remote", "no-such-model"):  # not allowed, or not there: the same 404
        with pytest.raises(openai.NotFoundError) as missing:
            limited.models.retrieve(name)
        assert missing.value.code == "model_not_found"
        assert missing.value.body == {
            "message": f"The model '{name}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }


# --- GET /v1/files?order= ------------------------------------------------------------------


def test_file_lists_in_either_order_page_right(gateway: Gateway, database: DatabaseURL):
    files = sdk(gateway, create_key(database.libpq(), "file-lister"))
    ids = [upload(files, jsonl([chat_line(f"f{i}", "x")]), name=f"f{i}.jsonl") for i in range(5)]
    assert [f.id for f in files.files.list(order="asc", limit=2)] == ids  # every page, in order
    assert [f.id for f in files.files.list(order="desc", limit=2)] == ids[::-1]
    assert [f.id for f in files.files.list(limit=2)] == ids[::-1]  # newest first by default

    pages = []
    after: str | openai.Omit = openai.omit
    while True:
        raw = files.files.with_raw_response.list(order="asc", limit=2, after=after)
        page = raw_json(raw)
        for obj in page["data"]:
            FileObject.model_validate(obj)
        pages.append(([obj["id"] for obj in page["data"]], page["has_more"]))
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert pages == [(ids[0:2], True), (ids[2:4], True), (ids[4:], False)]
    newest = files.files.list(order="desc", limit=2, after=ids[2])
    assert [f.id for f in newest.data] == [ids[1], ids[0]] and not newest.has_more

    with pytest.raises(openai.BadRequestError) as bad:
        files.files.list(extra_query={"order": "sideways"})
    assert bad.value.body is not None and bad.value.param == "order"


# --- expires_after on uploads --------------------------------------------------------------


def _upload(client: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    content = io.BytesIO(jsonl([chat_line("e", "x")]))
    raw = client.files.with_raw_response.create(
        file=("expiring.jsonl", content), purpose="batch", **kwargs
    )
    return raw_json(raw)


def test_files_expire_after_their_time(client: openai.OpenAI, db: psycopg.Connection):
    kept = FileObject.model_validate(_upload(client))
    assert kept.expires_at is None
    made = _upload(client, expires_after={"anchor": "created_at", "seconds": HOUR})
    expiring = FileObject.model_validate(made)
    assert expiring.expires_at == expiring.created_at + HOUR
    assert client.files.retrieve(expiring.id) == expiring

    for bad, param in (
        ({"anchor": "created_at", "seconds": 60}, "expires_after.seconds"),  # under an hour
        ({"anchor": "created_at", "seconds": 31 * 86400}, "expires_after.seconds"),
        ({"anchor": "last_active_at", "seconds": HOUR}, "expires_after.anchor"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            _upload(client, expires_after=bad)
        assert refused.value.param == param

    # An hour later (here: its expires_at moved to the past), it is gone for the client at
    # once, and the workers' sweep deletes it with its contents.
    db.execute(
        "UPDATE files SET expires_at = now() - interval '1 second' WHERE id = %s", (expiring.id,)
    )
    for gone in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            gone(expiring.id)
    assert expiring.id not in {f.id for f in client.files.list()}
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id=expiring.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    wait_until(
        lambda: (
            db.execute(
                "SELECT (SELECT count(*) FROM files WHERE id = %(id)s)"
                " + (SELECT count(*) FROM file_parts WHERE file_id = %(id)s) = 0",
                {"id": expiring.id},
            ).fetchone()
            == (True,)
        ),
        "the sweep to delete the expired file",
    )
    assert client.files.retrieve(kept.id).id == kept.id  # files without expiry stay


# --- the Batch's model -----------------------------------------------------------------------


def test_batch_object_names_its_model(client: openai.OpenAI):
    batch = start_batch(client, [chat_line(f"m{i}", "which model", model="other") for i in (1, 2)])
    Batch.model_validate(raw_json(client.batches.with_raw_response.retrieve(batch.id)))
    wait_for(client, batch.id)
    done = Batch.model_validate(raw_json(client.batches.with_raw_response.retrieve(batch.id)))
    assert done.status == "completed" and done.model == "other"
    listed = raw_json(client.batches.with_raw_response.list(limit=100))
    entry = next(b for b in listed["data"] if b["id"] == batch.id)
    assert Batch.model_validate(entry).model == "other"

    broken = client.batches.create(
        input_file_id=upload(client, b"{broken\n"),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    failed = wait_for(client, broken.id)
    assert failed.status == "failed" and failed.model is None  # no line, no model


# --- Response errors -------------------------------------------------------------------------


def _response(client: openai.OpenAI, request_id: str) -> dict[str, Any]:
    """The Response object as sent, after checking it against the SDK's type."""
    found = raw_json(client.responses.with_raw_response.retrieve(request_id))
    Response.model_validate(found)
    return found


def _finished(client: openai.OpenAI, text: str) -> dict[str, Any]:
    created = client.responses.create(
        model="remote", input=text, background=True, service_tier="flex"
    )
    return wait_until(
        lambda: (
            (r := _response(client, created.id))["status"] not in ("queued", "in_progress") and r
        ),
        f"{created.id} to end",
    )


def test_a_cancelled_response_has_no_error(client: openai.OpenAI, db: psycopg.Connection):
    created = client.responses.create(
        model="remote", input="mock:sleep_ms=3000 cancel me", background=True, service_tier="flex"
    )
    cancelled = raw_json(client.responses.with_raw_response.cancel(created.id))
    Response.model_validate(cancelled)
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", None)
    assert _response(client, created.id)["error"] is None
    # The row keeps why, for admins.
    assert db.execute(
        "SELECT error->>'code' FROM requests WHERE id = %s", (created.id,)
    ).fetchone() == ("cancelled",)


FAILURES = [
    # controls, OpenAI's code, the message (the row's code first, unless it is OpenAI's own:
    # the mock's 429 gives its own code, rate_limit_exceeded)
    ("status=503", "server_error", "upstream_503: mock status 503 (gave up after 3 attempts)"),
    ("status=400", "invalid_prompt", "upstream_400: mock status 400"),
    (
        "status=429,retry_after=0",
        "rate_limit_exceeded",
        "mock status 429 (gave up after 3 attempts)",
    ),
]


@pytest.mark.parametrize(("controls", "code", "message"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failed_responses_carry_openais_error_codes(
    client: openai.OpenAI, db: psycopg.Connection, controls: str, code: str, message: str
):
    failed = _finished(client, f"mock:{controls} fail")
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": code, "message": message}
    stored = db.execute("SELECT error->>'code' FROM requests WHERE id = %s", (failed["id"],))
    # The row keeps its own code: the one leading the message, else OpenAI's code itself.
    row_code = message.split(":")[0] if message.startswith("upstream_") else code
    assert stored.fetchone() == (row_code,)


def test_rows_with_tiergates_codes_read_with_openais(client: openai.OpenAI, db: psycopg.Connection):
    """Rows keep the codes they always had (written by SQL too): old rows read the same way."""
    cases = [
        ("failed", {"code": "gateway_interrupted", "message": "gone"}, "server_error"),
        ("failed", {"code": "processing_failed", "message": "bug"}, "server_error"),
        ("expired", {"code": "request_expired", "message": "late"}, "rate_limit_exceeded"),
    ]
    for status, error, code in cases:
        rid = client.responses.with_raw_response.create(model="mock", input="x").headers[
            "x-request-id"
        ]
        db.execute(
            "UPDATE requests SET status = %s, error = %s WHERE id = %s",
            (status, json.dumps(error), rid),
        )
        shown = _response(client, rid)
        assert shown["status"] == "failed"
        assert shown["error"] == {"code": code, "message": f"{error['code']}: {error['message']}"}


# --- output text parts -----------------------------------------------------------------------


def _text_parts(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [part for item in response["output"] for part in item["content"]]


def test_output_text_parts_carry_logprobs(client: openai.OpenAI):
    realtime = raw_json(client.responses.with_raw_response.create(model="remote", input="hi"))
    background = _finished(client, "later")
    chat = client.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "chat"}], service_tier="flex"
    )
    from_chat = _response(client, chat.id)  # built by tiergate from the chat completion
    for response in (realtime, background, from_chat):
        Response.model_validate(response)
        parts = _text_parts(response)
        assert parts and all(p["type"] == "output_text" and p["logprobs"] == [] for p in parts)
    assert _text_parts(from_chat)[0]["text"] == "echo: chat"


# --- token-array embedding input -----------------------------------------------------------


@pytest.mark.parametrize("model", ["mock", "remote"])
@pytest.mark.parametrize("tier", ["default", "flex"])
def test_embeddings_take_token_arrays(client: openai.OpenAI, model: str, tier: str):
    """LangChain's default embeddings client sends its texts as arrays of token ids."""

    def embed(value: Any) -> CreateEmbeddingResponse:
        raw = client.embeddings.with_raw_response.create(
            model=model, input=value, encoding_format="float", extra_body={"service_tier": tier}
        )
        return CreateEmbeddingResponse.model_validate(raw_json(raw))

    nested = embed([[1, 2, 3], [4, 5]])
    flat = embed([1, 2, 3])
    assert [d.index for d in nested.data] == [0, 1] and len(flat.data) == 1
    assert nested.usage.prompt_tokens == 5 and flat.usage.prompt_tokens == 3
    assert nested.data[0].embedding == flat.data[0].embedding != nested.data[1].embedding
    # As LangChain calls it: no format given, so the SDK asks for base64 and decodes it.
    default = client.embeddings.create(
        model=model, input=[[1, 2, 3]], extra_body={"service_tier": tier}
    )
    assert default.data[0].embedding == flat.data[0].embedding
    with pytest.raises(openai.BadRequestError) as refused:
        embed([[1, "two"]])
    assert refused.value.param == "input"
