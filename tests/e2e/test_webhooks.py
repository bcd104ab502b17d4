"""Signed webhooks end to end: a real gateway, a real worker process, endpoints made by
``tiergate webhooks``, and a receiver that verifies every delivery with the official SDK's
``webhooks.unwrap``."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, Process, base_env, create_key, start_worker
from tests.support.admin import dashboard_session
from tests.support.batches import chat_line, jsonl, start_batch, upload
from tests.support.waiting import wait_until

SDK = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
RESPONSES = 100
TIMEOUT_S = 60.0
WEBHOOKS = {
    "allow_private": True,  # the receiver is on loopback
    "timeout_s": 2,
    "retry_base_s": 0.2,
    "retry_max_s": 1,
    "poll_s": 1,
}


@dataclass
class Delivery:
    path: str
    webhook_id: str
    event: dict[str, Any]
    status: int


@dataclass
class Receiver:
    """Webhook endpoints at ``/<name>``: every request is verified with each secret of its
    path (all must verify), then answered 200, or 500 while ``failures`` last."""

    secrets: dict[str, list[str]] = field(default_factory=dict)
    attempts: list[Delivery] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fail_first: int = 0  # the first event to arrive gets this many 500s
    failing: str | None = None
    block_next: bool = False  # hold the next new event until ``released``
    blocked: str | None = None
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def delivered(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.attempts if d.path == path and d.status == 200]

    def tries(self, webhook_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.attempts if d.webhook_id == webhook_id]

    def handle(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        secrets = self.secrets.get(path)
        if not secrets:
            self.problems.append(f"a delivery to unknown path {path}")
            return 404
        try:
            events = [SDK.webhooks.unwrap(body, headers, secret=s) for s in secrets]
        except Exception as exc:
            self.problems.append(f"{path}: {exc!r}")
            return 400
        webhook_id = headers["webhook-id"]
        if events[0].id != webhook_id:
            self.problems.append(f"{path}: webhook-id {webhook_id} is not the event id")
        with self.lock:
            seen = any(d.webhook_id == webhook_id for d in self.attempts)
            status = 200
            if self.fail_first and (self.failing is None and not seen):
                self.failing = webhook_id
            if webhook_id == self.failing and self.fail_first > 0:
                self.fail_first -= 1
                status = 500
            block = self.block_next and not seen
            if block:
                self.block_next, self.blocked = False, webhook_id
        if block:
            self.released.wait(TIMEOUT_S)
            status = 503  # its worker is dead by now: nobody reads this
        with self.lock:
            self.attempts.append(Delivery(path, webhook_id, json.loads(body), status))
        return status


def serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            status = receiver.handle(
                self.path, body, {k.lower(): v for k, v in self.headers.items()}
            )
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = serve(found)
    yield found
    found.released.set()
    server.shutdown()


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {"name": "remote", "upstream": upstream, "flex_concurrency": 8},
            {"name": "slow-batch", "upstream": upstream, "flex_concurrency": 2},
        ],
        {
            "maintenance_every_s": 1,
            "batch_chunk": 4,
            "heartbeat_s": 0.5,
            "stalled_after_s": 3,
            "batch_windows": {"24h": 86400, "4s": 4},
        },
        webhooks=WEBHOOKS,
    )


@pytest.fixture(scope="module")
def with_worker() -> bool:
    return False  # a worker process of its own delivers (and is killed)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webhook-logs")


@pytest.fixture(scope="module")
def workers(database: DatabaseURL, gateway_config: Path, logs: Path) -> Iterator[list[Process]]:
    started = [
        start_worker(database_url=database.libpq(), config=gateway_config, log=logs / "w1.log")
    ]
    yield started
    for worker in started:
        worker.stop()


def cli(
    database: DatabaseURL, *args: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = base_env(DATABASE_URL=database.libpq())
    if config is not None:
        env["TIERGATE_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "webhooks", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def create(database: DatabaseURL, config: Path, url: str, *args: str) -> tuple[str, str]:
    """``tiergate webhooks create``: (endpoint id, secret: the last line)."""
    made = cli(database, "create", "--url", url, *args, config=config)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.strip().splitlines()
    assert lines[-1].startswith("whsec_")
    return lines[0].split()[3], lines[-1]


def refused(run: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == code, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.fixture(scope="module")
def client(gateway: Gateway, key: str, workers: list[Process]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def endpoints(
    database: DatabaseURL, gateway_config: Path, receiver: Receiver, key: str, other_key: str
) -> dict[str, str]:
    """alice's endpoint (every event), bob's, and an admin-wide one for batch.completed."""
    ids = {}
    for name, args in (
        ("alice", ["--key", "alice"]),
        ("bob", ["--key", "bob"]),
        ("admin", ["--events", "batch.completed"]),
    ):
        ids[name], secret = create(database, gateway_config, f"{receiver.url}/{name}", *args)
        receiver.secrets[f"/{name}"] = [secret]
    return ids


def wait_response(client: openai.OpenAI, rid: str) -> Any:
    return wait_until(
        lambda: (r := client.responses.retrieve(rid)).status not in ("queued", "in_progress") and r,
        f"{rid} to end",
        TIMEOUT_S,
    )


def test_events_arrive_signed_retried_and_only_to_their_key(
    client: openai.OpenAI,
    endpoints: dict[str, str],
    receiver: Receiver,
    db: psycopg.Connection,
    logs: Path,
):
    receiver.fail_first = 2  # the first event: 500, 500, then accepted
    ids = [
        client.responses.create(
            model="remote",
            input=f"hook {i}",
            background=True,
            service_tier="flex" if i % 2 else "default",
        ).id
        for i in range(RESPONSES)
    ]
    completed = start_batch(client, [chat_line(f"b-{i}", "hi") for i in range(3)])
    slow = [chat_line(f"s-{i}", "mock:sleep_ms=300", model="slow-batch") for i in range(20)]
    cancelled = start_batch(client, slow)
    wait_until(lambda: client.batches.retrieve(cancelled.id).status == "in_progress", "in progress")
    client.batches.cancel(cancelled.id)
    # Lines that outlast a 4 s window (two at a time, 1.5 s each): the batch expires.
    late = [chat_line(f"x-{i}", "mock:sleep_ms=1500", model="slow-batch") for i in range(8)]
    expired = client.batches.create(
        input_file_id=upload(client, jsonl(late)),
        endpoint="/v1/chat/completions",
        completion_window="4s",  # type: ignore[arg-type]
    )

    expected = {("response.completed", rid) for rid in ids}
    expected |= {
        ("batch.completed", completed.id),
        ("batch.cancelled", cancelled.id),
        ("batch.expired", expired.id),
    }

    def alice() -> set[tuple[str, str]]:
        return {(d.event["type"], d.event["data"]["id"]) for d in receiver.delivered("/alice")}

    wait_until(lambda: alice() == expected, "alice's events", TIMEOUT_S)
    assert not receiver.problems
    delivered = receiver.delivered("/alice")
    assert len({d.webhook_id for d in delivered}) == len(delivered) == len(expected)  # once each
    for d in delivered:
        assert d.event["object"] == "event" and d.event["id"].startswith("evt_")
        assert abs(d.event["created_at"] - time.time()) < 120
    # The failed event: three tries under one webhook-id, the third accepted; as rows say.
    assert receiver.failing is not None
    assert [t.status for t in receiver.tries(receiver.failing)] == [500, 500, 200]
    row = db.execute(
        "SELECT status, attempts, last_status, delivered_at IS NOT NULL FROM webhook_deliveries"
        " WHERE event_id = %s",
        (receiver.failing,),
    ).fetchone()
    assert row == ("delivered", 3, 200, True)
    log = (logs / "w1.log").read_text()  # retried after its backoff, not after a lease lapsed
    for attempt in (1, 2):
        assert (
            f"webhook {receiver.failing} to endpoint {endpoints['alice']}: attempt {attempt}"
            f" failed (HTTP 500); next in" in log
        )
    assert "result not stored" not in log
    failing = db.execute(
        "SELECT failing_since FROM webhook_endpoints WHERE id = %s", (endpoints["alice"],)
    ).fetchone()
    assert failing == (None,)  # a success ends the failing streak
    # The admin-wide endpoint gets every key's batch.completed, nothing else; bob nothing.
    wait_until(lambda: receiver.delivered("/admin"), "the admin's event", TIMEOUT_S)
    assert {(d.event["type"], d.event["data"]["id"]) for d in receiver.delivered("/admin")} == {
        ("batch.completed", completed.id)
    }
    time.sleep(1.5)  # a safety-net look of the deliverer: nothing more comes
    assert receiver.delivered("/bob") == []
    assert len(receiver.delivered("/alice")) == len(expected)
    assert not receiver.problems


def delivery_rows(page: str) -> list[dict[str, str]]:
    """The rows of a dashboard page's webhook deliveries table, as {header: cell text}."""
    section = page.split('<section class="card webhooks">', 1)[1].split("</section>", 1)[0]
    body = section.split("<tbody>", 1)[1]
    rows = []
    for tr in body.split("<tr>")[1:]:
        cells = re.findall(r'<td data-label="([^"]+)">(.*?)</td>', tr, re.S)
        rows.append({h: html.unescape(re.sub(r"<[^>]+>", "", c)) for h, c in cells})
    return rows


def test_the_dashboard_shows_a_responses_and_a_batchs_deliveries(
    gateway: Gateway,
    database: DatabaseURL,
    client: openai.OpenAI,
    receiver: Receiver,
    endpoints: dict[str, str],
):
    """After the test above: the response whose event got two 500s, and the completed batch
    (alice's endpoint and the admin-wide one), on their dashboard pages."""
    assert receiver.failing is not None
    retried = receiver.tries(receiver.failing)[-1].event["data"]["id"]
    batch = receiver.delivered("/admin")[0].event["data"]["id"]
    host = receiver.url.removeprefix("http://")
    plain = client.responses.create(model="remote", input="no webhook").id  # not background
    admin = create_key(database.libpq(), "hooks-admin", admin=True)
    with dashboard_session(gateway.url, admin) as http:
        page = http.get(f"/dashboard/requests/{retried}")
        assert page.status_code == 200
        [shown] = delivery_rows(page.text)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown.pop("Delivered"))
        assert shown == {
            "Endpoint": host,
            "Event": "response.completed",
            "Status": "delivered",
            "Attempts": "3",
            "Last status": "200",
            "Last error": "—",
            "Next attempt": "—",
        }
        assert f'title="{endpoints["alice"]}: {receiver.url}/alice"' in page.text
        page = http.get(f"/dashboard/batches/{batch}")
        assert page.status_code == 200
        rows = delivery_rows(page.text)
        assert (
            sorted(
                (d["Endpoint"], d["Event"], d["Status"], d["Attempts"], d["Last status"])
                for d in rows
            )
            == [(host, "batch.completed", "delivered", "1", "200")] * 2
        )
        assert {d["Delivered"] for d in rows} != {"—"}
        page = http.get(f"/dashboard/requests/{plain}")
        assert page.status_code == 200 and "Webhook deliveries" not in page.text


def test_a_cancelled_background_response_sends_response_cancelled(
    client: openai.OpenAI, endpoints: dict[str, str], receiver: Receiver
):
    created = client.responses.create(
        model="slow-batch", input="mock:sleep_ms=3000", background=True, service_tier="flex"
    )
    client.responses.cancel(created.id)
    wait_until(
        lambda: (
            ("response.cancelled", created.id)
            in {(d.event["type"], d.event["data"]["id"]) for d in receiver.delivered("/alice")}
        ),
        "response.cancelled",
        TIMEOUT_S,
    )


def test_keys_see_and_change_only_their_own_endpoints(
    database: DatabaseURL, gateway_config: Path, endpoints: dict[str, str]
):
    listed = cli(database, "list", "--key", "bob", config=gateway_config)
    assert listed.returncode == 0, listed.stderr
    assert endpoints["bob"] in listed.stdout
    assert endpoints["alice"] not in listed.stdout and endpoints["admin"] not in listed.stdout
    everything = cli(database, "list", config=gateway_config).stdout
    assert all(e in everything for e in endpoints.values())
    assert "whsec_" not in everything
    for command in ("disable", "enable", "delete", "rotate-secret"):
        run = cli(database, command, endpoints["alice"], "--key", "bob", config=gateway_config)
        assert refused(run, 1) == f"tiergate: no webhook endpoint '{endpoints['alice']}' of key bob"


def test_mistakes_get_one_clear_line(
    database: DatabaseURL, gateway_config: Path, receiver: Receiver, endpoints: dict[str, str]
):
    # Safe by default: without webhooks.allow_private a loopback or private URL is refused.
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://169.254.169.254/x"):
        line = refused(cli(database, "create", "--url", url), 2)
        assert "loopback, private or link-local" in line and "allow_private" in line
    line = refused(cli(database, "create", "--url", "ftp://example.com/x"), 2)
    assert "only http and https" in line
    run = cli(
        database,
        "create",
        "--url",
        f"{receiver.url}/x",
        "--events",
        "response.done",
        config=gateway_config,
    )
    assert "unknown event name: response.done (known: response.completed," in refused(run, 2)
    again = cli(
        database,
        "create",
        "--url",
        f"{receiver.url}/alice",
        "--key",
        "alice",
        config=gateway_config,
    )
    assert refused(again, 1).startswith(
        f"tiergate: an endpoint for this URL exists already ({endpoints['alice']}"
    )
    nobody = cli(
        database, "create", "--url", f"{receiver.url}/y", "--key", "nobody", config=gateway_config
    )
    assert refused(nobody, 1) == "tiergate: no active key with id or name 'nobody'"


def test_after_rotation_events_verify_with_the_old_and_the_new_secret(
    database: DatabaseURL,
    gateway_config: Path,
    receiver: Receiver,
    client: openai.OpenAI,
    endpoints: dict[str, str],
):
    old = receiver.secrets["/alice"][0]
    run = cli(
        database, "rotate-secret", endpoints["alice"], "--key", "alice", config=gateway_config
    )
    assert run.returncode == 0, run.stderr
    new = run.stdout.strip().splitlines()[-1]
    assert new.startswith("whsec_") and new != old
    receiver.secrets["/alice"] = [new, old]  # every delivery must verify with both
    created = client.responses.create(model="remote", input="rotated", background=True)
    wait_until(
        lambda: created.id in {d.event["data"]["id"] for d in receiver.delivered("/alice")},
        "the event after rotation",
        TIMEOUT_S,
    )
    assert not receiver.problems
    receiver.secrets["/alice"] = [new]


def test_a_killed_worker_loses_no_event(
    database: DatabaseURL,
    gateway_config: Path,
    receiver: Receiver,
    client: openai.OpenAI,
    endpoints: dict[str, str],
    workers: list[Process],
    logs: Path,
):
    receiver.block_next = True
    created = client.responses.create(model="remote", input="kill me", background=True)
    wait_until(lambda: receiver.blocked, "the delivery to be under way", TIMEOUT_S)
    workers[0].kill()  # after the status change, during the delivery
    receiver.released.set()
    workers.append(
        start_worker(database_url=database.libpq(), config=gateway_config, log=logs / "w2.log")
    )
    wait_until(
        lambda: created.id in {d.event["data"]["id"] for d in receiver.delivered("/alice")},
        "the event, delivered by the new worker once the dead one's lease lapsed",
        TIMEOUT_S,
    )
    tries = receiver.tries(receiver.blocked or "")
    assert [t.status for t in tries] == [503, 200]  # one webhook-id: the same event
    assert not receiver.problems


def test_no_secret_reaches_a_log(receiver: Receiver, logs: Path, gateway: Gateway):
    text = "".join(p.read_text() for p in logs.glob("*.log"))
    assert gateway.process.log.exists()
    text += gateway.process.log.read_text()
    assert "whsec_" not in text
