"""Secrets and isolation: hashed keys, no secret in any row or log line, no bypass header,
one key never reaches another key's responses, files or batches.

The gateway of this module logs at DEBUG, and a second worker process runs beside its
in-process worker, also at DEBUG: a secret handed to a log call would show in their logs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import yaml
from psycopg import sql

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import (
    START_TIMEOUT_S,
    Gateway,
    Process,
    base_env,
    create_key,
    free_port,
    wait_http,
)
from tests.e2e.conftest import PROVIDER_SECRET
from tests.support.batches import chat_line, jsonl, start_batch, upload
from tests.support.waiting import wait_until

# A key a client tried that does not exist: it must not be logged either.
BOGUS_KEY = "tg-bogus-client-key-that-does-not-exist"
FINAL = {"completed", "failed", "cancelled", "expired"}
BYPASS_HEADERS = ("x-tiergate-internal", "x-internal", "x-tiergate-worker", "x-tiergate-tracked")
BYPASS_VALUES = ("1", "true", PROVIDER_SECRET)


class ProviderRecorder(ThreadingHTTPServer):
    """A minimal OpenAI-compatible provider that records the ``Authorization`` it receives,
    proving the provider key was in the gateway's and workers' hands."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecorderHandler)
        self.authorizations: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _RecorderHandler(BaseHTTPRequestHandler):
    server: ProviderRecorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.authorizations.append(self.headers.get("authorization"))
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        message = {"role": "assistant", "content": "recorded"}
        reply = {
            "id": "chatcmpl-recorded",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def provider() -> Iterator[ProviderRecorder]:
    server = ProviderRecorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway_config(
    gateway_config: Path, provider: ProviderRecorder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The shared config plus ``recorded`` (the recorder) and ``dead`` (nothing listens),
    both with the provider key."""
    data = yaml.safe_load(gateway_config.read_text())
    key_env = "TIERGATE_TEST_PROVIDER_KEY"
    data["models"] += [
        {"name": "recorded", "upstream": provider.url, "api_key_env": key_env},
        {
            "name": "dead",
            "upstream": f"http://127.0.0.1:{free_port()}/v1",
            "api_key_env": key_env,
            "max_attempts": 2,
            "timeout_s": 2,
        },
    ]
    return write_config(
        tmp_path_factory.mktemp("security-config") / "tiergate.yaml",
        data["models"],
        data.get("limits"),
    )


def _debug_process(args: list[str], database: DatabaseURL, config: Path, log: Path) -> Process:
    env = base_env(
        DATABASE_URL=database.libpq(),
        TIERGATE_CONFIG=str(config),
        TIERGATE_TEST_PROVIDER_KEY=PROVIDER_SECRET,
    )
    return Process(["--log-level", "DEBUG", *args], env, log).start()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security-logs")


@pytest.fixture(scope="module")
def gateway(database: DatabaseURL, gateway_config: Path, logs: Path) -> Iterator[Gateway]:
    """``tiergate serve`` (with its in-process worker) and one ``tiergate worker``, at DEBUG."""
    port = free_port()
    served = _debug_process(
        ["serve", "--port", str(port)], database, gateway_config, logs / "g.log"
    )
    worker = _debug_process(["worker"], database, gateway_config, logs / "worker.log")
    assert served.proc is not None
    wait_http(f"http://127.0.0.1:{port}/readyz", served.proc, served.log, START_TIMEOUT_S)
    yield Gateway(url=f"http://127.0.0.1:{port}", process=served)
    worker.stop()
    served.stop()


def _wait_final(client: openai.OpenAI, response_id: str) -> None:
    wait_until(
        lambda: client.responses.retrieve(response_id).status in ("completed", "failed"),
        f"background response {response_id}",
    )


def _wait_batch(client: openai.OpenAI, batch_id: str):  # type: ignore[no-untyped-def]
    return wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status in FINAL and b,
        f"batch {batch_id}",
    )


def drive_traffic(client: openai.OpenAI, gateway: Gateway) -> None:
    """Realtime, streaming, flex, background, retried, failed and batch work, and files."""
    user = [{"role": "user", "content": "hi"}]
    for model in ("remote", "recorded"):
        client.chat.completions.create(model=model, messages=user)  # realtime
        client.chat.completions.create(model=model, messages=user, service_tier="flex")
        done = start_batch(client, [chat_line(f"{model}-{i}", "batch", model) for i in range(3)])
        assert _wait_batch(client, done.id).status == "completed"
        client.files.content(client.batches.retrieve(done.id).output_file_id).read()
    client.responses.create(model="remote", input="realtime")
    client.embeddings.create(model="remote", input="vector")
    with client.responses.stream(model="remote", input="streamed") as stream:
        stream.get_final_response()
    client.responses.create(model="remote", input="flex", service_tier="flex")
    _wait_final(client, client.responses.create(model="remote", input="bg", background=True).id)
    # Retried once, then fine; refused by the provider; a provider nobody listens to.
    client.responses.create(
        model="remote", input="mock:fail_times=1,key=security-retry", service_tier="flex"
    )
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="remote", input="mock:status=400")
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="dead", messages=user)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="dead", messages=user, service_tier="flex")
    assert (
        httpx.get(
            gateway.api + "/models", headers={"Authorization": f"Bearer {BOGUS_KEY}"}
        ).status_code
        == 401
    )


def dump_database(db: psycopg.Connection) -> dict[str, str]:
    """Every row of every table (tiergate's and procrastinate's), as text, by table."""
    tables = db.execute(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_type = 'BASE TABLE'"
        " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    dump = {}
    for schema, table in tables:
        query = sql.SQL("SELECT t::text FROM {}.{} t").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        dump[table] = "\n".join(row[0] for row in db.execute(query))
    return dump


def forms(secret: str) -> list[str]:
    """How a secret could appear in text: as it is, and hex-encoded (``bytea::text``)."""
    return [secret, secret.encode().hex()]


def test_secrets_never_reach_a_row_or_a_log_line(
    client: openai.OpenAI,
    gateway: Gateway,
    key: str,
    db: psycopg.Connection,
    provider: ProviderRecorder,
    logs: Path,
):
    drive_traffic(client, gateway)
    # The provider key was really in play: the recorder got it on every call, flex too.
    assert provider.authorizations
    assert set(provider.authorizations) == {f"Bearer {PROVIDER_SECRET}"}

    dump = dump_database(db)
    expected_tables = {"api_keys", "requests", "batches", "files", "file_parts", "processes"}
    assert expected_tables | {"procrastinate_jobs", "procrastinate_events"} <= set(dump)
    everything = "\n".join(dump.values())
    assert "echo: realtime" in everything and "recorded" in everything  # the traffic is there
    log_files = sorted(logs.glob("*.log"))
    assert len(log_files) == 2
    log_text = "\n".join(path.read_text() for path in log_files)
    assert "upstream_unreachable" in log_text  # failures are logged (without secrets)
    for secret in (key, PROVIDER_SECRET, BOGUS_KEY):
        for form in forms(secret):
            for table, text in dump.items():
                assert form not in text, f"{secret[:12]}... in table {table}"
            assert form not in log_text, f"{secret[:12]}... in a log file"


def test_keys_are_stored_only_as_sha256_hashes(key: str, db: psycopg.Connection):
    rows = db.execute(
        "SELECT t::text, key_hash, key_prefix FROM api_keys t WHERE name = 'alice'"
    ).fetchall()
    assert len(rows) == 1
    text, key_hash, prefix = rows[0]
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in text and key.encode().hex() not in text
    assert len(prefix) < 8 and key.startswith(prefix)  # a hint for humans, not the secret
    columns = {
        name
        for (name,) in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'"
        )
    }
    assert columns == {
        "id", "name", "key_hash", "key_prefix", "models", "created_at", "revoked_at", "is_admin",
        "rpm", "tpm", "budget_usd", "budget_period", "weight", "cache_enabled",
    }  # fmt: skip


@pytest.mark.parametrize("header", BYPASS_HEADERS)
def test_internal_looking_headers_bypass_nothing(
    header: str, gateway: Gateway, key: str, database: DatabaseURL, db: psycopg.Connection
):
    for value in BYPASS_VALUES:
        spoof = {header: value}
        # No key: 401 everywhere, whatever else the client claims.
        for method, path in (("POST", "/responses"), ("GET", "/models"), ("GET", "/batches")):
            response = httpx.request(
                method, gateway.api + path, headers=spoof, json={"model": "mock", "input": "x"}
            )
            assert response.status_code == 401, (header, value, path)
        response = httpx.get(
            gateway.api + "/models", headers={**spoof, "Authorization": f"Bearer {PROVIDER_SECRET}"}
        )
        assert response.status_code == 401  # the provider key is no client key

    limited = create_key(database.libpq(), f"limited-{header}", "mock")
    headers = {header: "1", "Authorization": f"Bearer {limited}"}
    http = httpx.Client(base_url=gateway.api, headers=headers, timeout=60)
    # The tier middleware still validates, checks model permissions, and classifies.
    assert http.post("/responses", json={"model": "mock"}).status_code == 400
    assert http.post("/responses", json={"model": "remote", "input": "x"}).status_code == 403
    flex = http.post("/responses", json={"model": "mock", "input": "x", "service_tier": "flex"})
    assert flex.status_code == 200 and flex.json()["service_tier"] == "flex"
    realtime = http.post("/responses", json={"model": "mock", "input": "x"}).json()
    tracked = db.execute(
        "SELECT id, service_tier, claimed_by IS NOT NULL FROM requests WHERE id = ANY(%s)"
        " ORDER BY service_tier",
        ([flex.json()["id"], realtime["id"]],),
    ).fetchall()
    assert tracked == [(realtime["id"], "default", False), (flex.json()["id"], "flex", True)]


def test_a_key_never_reaches_another_keys_objects(
    client: openai.OpenAI, gateway: Gateway, other_key: str
):
    user = [{"role": "user", "content": "private"}]
    background = client.responses.create(model="mock", input="private", background=True)
    flex = client.responses.create(model="mock", input="private", service_tier="flex")
    chats = [
        client.chat.completions.create(model="mock", messages=user).id,
        client.chat.completions.create(model="mock", messages=user, service_tier="flex").id,
    ]
    embedding = client.embeddings.with_raw_response.create(model="mock", input="private")
    batch = start_batch(client, [chat_line(f"line-{i}", "private", "mock") for i in range(2)])
    done = _wait_batch(client, batch.id)
    file_ids = [done.input_file_id, done.output_file_id]
    output = client.files.content(done.output_file_id).read()
    lines = [json.loads(line) for line in output.splitlines()]
    line_ids = [line["id"] for line in lines]
    request_ids = [
        background.id,
        flex.id,
        *chats,
        embedding.headers["x-request-id"],
        *line_ids,
    ]

    chat_ids = [*chats, *line_ids]  # stored chat completions: the batch lines are too

    intruder = openai.OpenAI(base_url=gateway.api, api_key=other_key, max_retries=0)
    attempts = [
        *(lambda r=r: intruder.responses.retrieve(r) for r in request_ids),
        *(lambda r=r: intruder.responses.cancel(r) for r in request_ids),
        *(lambda r=r: intruder.responses.delete(r) for r in request_ids),
        *(lambda r=r: intruder.chat.completions.retrieve(r) for r in chat_ids),
        *(lambda r=r: intruder.chat.completions.update(r, metadata={"x": "y"}) for r in chat_ids),
        *(lambda r=r: intruder.chat.completions.messages.list(r) for r in chat_ids),
        *(lambda r=r: intruder.chat.completions.delete(r) for r in chat_ids),
        *(lambda f=f: intruder.files.retrieve(f) for f in file_ids),
        *(lambda f=f: intruder.files.content(f) for f in file_ids),
        *(lambda f=f: intruder.files.delete(f) for f in file_ids),
        lambda: intruder.batches.retrieve(batch.id),
        lambda: intruder.batches.cancel(batch.id),
        lambda: intruder.batches.create(
            input_file_id=done.input_file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            attempt()
    # Lists show none of them, also when paged from one of the owner's ids.
    theirs = {*request_ids, *file_ids, batch.id}
    upload(intruder, jsonl([chat_line("own", "x", "mock")]))  # the intruder has files of its own
    seen = {f.id for f in intruder.files.list()} | {b.id for b in intruder.batches.list()}
    intruder.chat.completions.create(model="mock", messages=user)  # its own completion
    seen |= {c.id for c in intruder.chat.completions.list()}
    for after in (batch.id, done.input_file_id, chats[0]):
        seen |= {f.id for f in intruder.files.list(after=after)}
        seen |= {b.id for b in intruder.batches.list(after=after)}
        seen |= {c.id for c in intruder.chat.completions.list(after=after)}
    assert seen and not seen & theirs
    # And nothing changed for the owner.
    assert client.batches.retrieve(batch.id).status == "completed"
    for file_id in file_ids:
        assert client.files.retrieve(file_id).id == file_id
    for request_id in request_ids:
        assert client.responses.retrieve(request_id).status != "cancelled"
    mine = {b.id for b in client.batches.list()} | {f.id for f in client.files.list()}
    assert {batch.id, *file_ids} <= mine
    assert set(chat_ids) <= {c.id for c in client.chat.completions.list()}
