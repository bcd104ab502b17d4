"""Keys: every /v1 call needs one; a key sees only its own work and its own models."""

from __future__ import annotations

import httpx
import openai
import pytest

from app.store.dburl import DatabaseURL
from app.testing.processes import Gateway, create_key
from tests.support.batches import chat_line, jsonl, upload


def test_missing_or_unknown_key_is_401(gateway: Gateway):
    unknown = openai.OpenAI(base_url=gateway.api, api_key="tg-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        unknown.responses.create(model="mock", input="hi")
    assert info.value.code == "invalid_api_key"
    for path in ("/responses", "/responses/resp_x", "/models"):
        response = httpx.get(gateway.api + path)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404_and_forbidden_model_is_403(gateway: Gateway, database: DatabaseURL):
    limited = openai.OpenAI(
        base_url=gateway.api,
        api_key=create_key(database.libpq(), "limited", "mock"),
        max_retries=0,
    )
    assert limited.responses.create(model="mock", input="allowed").status == "completed"
    with pytest.raises(openai.PermissionDeniedError):
        limited.responses.create(model="remote", input="not allowed")
    with pytest.raises(openai.PermissionDeniedError):
        limited.responses.create(model="remote", input="not allowed", service_tier="flex")
    with pytest.raises(openai.NotFoundError) as info:
        limited.responses.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found"
    assert [m.id for m in limited.models.list()] == ["mock"]


def test_a_key_never_sees_another_keys_responses(
    client: openai.OpenAI, gateway: Gateway, other_key: str
):
    mine = client.responses.create(model="mock", input="private", background=True)
    realtime = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "private chat"}]
    )
    intruder = openai.OpenAI(base_url=gateway.api, api_key=other_key, max_retries=0)
    for rid in (mine.id, realtime.id):
        with pytest.raises(openai.NotFoundError):
            intruder.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError):
            intruder.responses.cancel(rid)
        with pytest.raises(openai.NotFoundError):
            intruder.responses.delete(rid)
    with pytest.raises(openai.NotFoundError):
        intruder.chat.completions.retrieve(realtime.id)
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner


def test_revoked_key_stops_working_at_once(gateway: Gateway, database: DatabaseURL):
    import subprocess
    import sys

    from app.testing.processes import base_env
    from tests.support.paths import ROOT

    secret = create_key(database.libpq(), "short-lived")
    user = openai.OpenAI(base_url=gateway.api, api_key=secret, max_retries=0)
    done = user.responses.create(model="mock", input="works")
    assert done.status == "completed"
    file_id = upload(user, jsonl([chat_line("a", "x", "mock")]))
    batch_id = user.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", "short-lived"],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database.libpq()),
        check=True,
        capture_output=True,
        timeout=60,
    )
    for call in (
        lambda: user.responses.create(model="mock", input="revoked"),
        lambda: user.responses.retrieve(done.id),
        lambda: user.files.list(),
        lambda: user.files.retrieve(file_id),
        lambda: user.files.content(file_id),
        lambda: user.batches.list(),
        lambda: user.batches.retrieve(batch_id),
        lambda: user.batches.cancel(batch_id),
    ):
        with pytest.raises(openai.AuthenticationError):
            call()


def test_ops_endpoints_need_no_key(gateway: Gateway, client: openai.OpenAI):
    client.responses.create(model="mock", input="count me")
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    metrics = httpx.get(gateway.url + "/metrics").text
    assert (
        'tiergate_requests_total{endpoint="/v1/responses",status="completed",tier="default"}'
        in metrics
    )
    assert "tiergate_request_seconds_bucket" in metrics
    assert "tiergate_queue_depth" in metrics
