"""PostgreSQL failover under load, with real servers: a primary and its synchronous standby
(``initdb``, ``pg_basebackup -R``, ``pg_ctl``), two gateways and two workers whose
``DATABASE_URL`` names both hosts. The primary is SIGKILLed and the standby promoted while
blocking flex clients, background responses, realtime calls and a batch run.

Counted: every request a client saw accepted (200, ``queued``, a batch line counted) exists
afterwards and finished once; no client hangs or sees a 500 (a 503 with ``retry-after`` while
no primary is reachable); every process is back within 10 s of the promotion.

Also: the only server unreachable for ``TIERGATE_TEST_OUTAGE_S`` seconds (20 in the suite,
120 under ``make test-failover``): writes get 503, ``/readyz`` says not ready, and
everything resumes by itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.store.migrate import upgrade
from app.testing.config import write_config
from app.testing.processes import (
    Gateway,
    Process,
    base_env,
    create_key,
    start_gateway,
    start_worker,
)
from app.testing.replication import ReplicatedPair, lone_server, replicated_pair
from tests.support.batches import jsonl, responses_line, start_batch, upload
from tests.support.waiting import seconds_until, wait_until

RECONNECT_S = 10.0  # every process finds the new primary this soon after the promotion
HEAL_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 60.0  # no answer by then is a hang
BATCH_LINES = 300
LINE_MS = 500  # slow enough that the batch is still running when the server goes
OUTAGE_S = float(os.environ.get("TIERGATE_TEST_OUTAGE_S", "20"))
LIMITS = {
    "heartbeat_s": 1,
    "stalled_after_s": 15,
    "maintenance_every_s": 1,
    "waiter_recheck_s": 1,
    "batch_chunk": 20,
    "db_pool_size": 4,
    "db_max_overflow": 8,
}


@dataclass
class Seen:
    """What one client call got."""

    kind: str  # flex | background | realtime
    gateway: int
    started: float  # time.time()
    ended: float
    status: int | str  # HTTP status, or the exception's name (a hang, a dropped connection)
    request_id: str | None = None
    retry_after: str | None = None
    ok: bool = True  # the answer is the right one


class Load:
    """Client threads calling the gateways in turn until stopped, recording every answer."""

    KINDS = {"flex": 6, "background": 3, "realtime": 3}

    def __init__(self, clients: list[openai.OpenAI]) -> None:
        self.clients = clients
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(kind, n), daemon=True)
            for kind, count in self.KINDS.items()
            for n in range(count)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        """Stop and wait for every client's last call (a call never lasts longer than the
        SDK's timeout: a thread still alive after that hangs)."""
        self.stop.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT_S + 10)
        assert not [t for t in self.threads if t.is_alive()], "a client hangs"

    def count(self, kind: str, status: int | str, after: float = 0.0) -> int:
        with self._lock:
            return sum(
                1 for s in self.seen if (s.kind, s.status) == (kind, status) and s.ended > after
            )

    def _call(self, client: openai.OpenAI, kind: str, text: str) -> Response:
        if kind == "flex":
            return client.responses.create(
                model="remote", input=f"mock:sleep_ms=300 {text}", service_tier="flex"
            )
        if kind == "background":
            return client.responses.create(
                model="remote", input=f"mock:sleep_ms=500 {text}", background=True,
                service_tier="flex",
            )  # fmt: skip
        return client.responses.create(model="remote", input=text)

    def _run(self, kind: str, n: int) -> None:
        calls = 0
        while not self.stop.is_set():
            calls += 1
            gateway = (n + calls) % len(self.clients)
            text = f"{kind} {n}.{calls}"
            began = time.time()
            try:
                answer = self._call(self.clients[gateway], kind, text)
                answer = Response.model_validate(answer.model_dump())
                if kind == "background":
                    ok = answer.status == "queued"
                else:
                    ok = answer.status == "completed" and answer.output_text.endswith(text)
                seen = Seen(kind, gateway, began, time.time(), 200, answer.id, ok=ok)
            except openai.APIStatusError as exc:
                retry = exc.response.headers.get("retry-after")
                seen = Seen(kind, gateway, began, time.time(), exc.status_code, retry_after=retry)
            except openai.APIError as exc:  # no HTTP answer at all
                seen = Seen(kind, gateway, began, time.time(), type(exc).__name__)
            with self._lock:
                self.seen.append(seen)
            if seen.status == 503:  # as a client honouring retry-after would, briefly
                self.stop.wait(0.2)
            elif kind == "background" and seen.request_id is not None:
                self._poll(self.clients[gateway], seen.request_id)

    def _poll(self, client: openai.OpenAI, request_id: str) -> None:
        """Wait for a background response as its client would: polling (a 503 meanwhile is
        retried; anything else but 200 is recorded as a wrong answer)."""
        while not self.stop.is_set():
            try:
                if client.responses.retrieve(request_id).status == "completed":
                    return
            except openai.APIStatusError as exc:
                if exc.status_code != 503:
                    self._record(Seen("poll", 0, 0, time.time(), exc.status_code, request_id))
            except openai.APIError as exc:
                self._record(Seen("poll", 0, 0, time.time(), type(exc).__name__, request_id))
            self.stop.wait(0.2)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


def sql(url: DatabaseURL, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url.libpq(), autocommit=True) as conn:
        return conn.execute(statement.encode(), args).fetchall()


def relistened(log: Path, name: str, after: float) -> float | None:
    """When ``log``'s LISTEN connection ``name`` was (re)established after ``after``, in
    seconds after it; None if it was not."""
    for line in log.read_text().splitlines():
        found = re.match(rf"(\S+ \S+) INFO  \S+: {name}: listening on", line)
        if found:
            at = dt.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at > after:
                return at - after
    return None


def readiness(gateway: Gateway) -> int:
    try:
        return httpx.get(gateway.url + "/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def config_for(tmp: Path, mock_upstream: str) -> Path:
    """``remote`` for the clients' calls, ``bulk`` for the batch (its own slots: the batch
    must not hold the flex calls whose answer times are measured)."""
    upstream = {"upstream": f"{mock_upstream}/v1", "timeout_s": 10}
    models = [
        {"name": "remote", "flex_concurrency": 16, **upstream},
        {"name": "bulk", "flex_concurrency": 8, **upstream},
    ]
    return write_config(tmp / "tiergate.yaml", models, LIMITS)


@dataclass
class Stack:
    url: DatabaseURL
    gateways: list[Gateway]
    workers: list[Process]
    clients: list[openai.OpenAI]

    @property
    def logs(self) -> dict[str, Path]:
        named = {f"gateway-{i}": g.process.log for i, g in enumerate(self.gateways)}
        return named | {f"worker-{i}": w.log for i, w in enumerate(self.workers)}


@contextlib.contextmanager
def running_stack(
    url: DatabaseURL, work: Path, mock_upstream: str, *, gateways: int, workers: int
) -> Iterator[Stack]:
    """Migrated, then ``gateways`` gateways and ``workers`` workers as processes on ``url``."""
    upgrade(url)
    config = config_for(work, mock_upstream)
    db = url.libpq()
    started: list[Process] = []
    try:
        gws = []
        for i in range(gateways):
            gws.append(start_gateway(database_url=db, config=config, log=work / f"gateway-{i}.log",
                                     worker=False))  # fmt: skip
            started.append(gws[-1].process)
        for i in range(workers):
            started.append(start_worker(database_url=db, config=config,
                                        log=work / f"worker-{i}.log", concurrency=8))  # fmt: skip
        key = create_key(db, "failover")
        clients = [
            openai.OpenAI(base_url=g.api, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)
            for g in gws
        ]
        yield Stack(url, gws, started[gateways:], clients)
    finally:
        for process in started:
            process.stop()


def no_tracebacks(stack: Stack) -> None:
    for name, log in stack.logs.items():
        assert "Traceback" not in log.read_text(), f"{name} logged a traceback: {log}"


def batch_done(client: openai.OpenAI, batch_id: str) -> Batch | None:
    batch = Batch.model_validate(client.batches.retrieve(batch_id).model_dump())
    return batch if batch.status == "completed" else None


def check_batch(client: openai.OpenAI, batch: Batch, counted_before: int) -> None:
    """Every line completed once: each custom_id once in the output, none in errors."""
    assert batch.request_counts is not None
    assert batch.request_counts.completed == BATCH_LINES >= counted_before
    assert batch.request_counts.failed == 0 and batch.output_file_id is not None
    lines = client.files.content(batch.output_file_id).read().splitlines()
    ids = Counter(json.loads(line)["custom_id"] for line in lines)
    assert ids == Counter({f"line-{i}": 1 for i in range(BATCH_LINES)})


def check_accepted(stack: Stack, load: Load) -> dict[str, int]:
    """Every request a client saw accepted has its row, completed, once; the counts."""
    accepted = {s.request_id: s.kind for s in load.seen if s.status == 200}
    assert None not in accepted and len(accepted) == load_count(load, 200)
    for request_id in [r for r, kind in accepted.items() if kind == "background"]:
        wait_until(
            lambda r=request_id: (
                sql(stack.url, "SELECT status FROM requests WHERE id = %s", r) == [("completed",)]
            ),
            f"background request {request_id} to complete",
            HEAL_TIMEOUT_S,
        )
    rows = dict(
        sql(stack.url, "SELECT id, status FROM requests WHERE id = ANY(%s)", list(accepted))
    )
    assert sorted(rows) == sorted(accepted), "accepted requests without a row"
    assert set(rows.values()) == {"completed"}, Counter(rows.values())
    return dict(Counter(accepted.values()))


def load_count(load: Load, status: int | str) -> int:
    return sum(load.count(kind, status) for kind in Load.KINDS)


def check_answers(load: Load) -> Counter[str]:
    """No 500, no dropped connection, no hang: a right answer or a 503 with retry-after."""
    statuses: Counter[str] = Counter(f"{s.kind} {s.status}" for s in load.seen)
    wrong = [s for s in load.seen if s.status not in (200, 503) or not s.ok]
    assert not wrong, (wrong[:5], statuses)
    assert all(s.retry_after for s in load.seen if s.status == 503), statuses
    return statuses


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedPair]:
    with replicated_pair(tmp_path_factory.mktemp("replicated")) as servers:
        yield servers


def test_failover_under_load_loses_nothing_and_every_process_finds_the_new_primary(
    pair: ReplicatedPair, tmp_path_factory: pytest.TempPathFactory, mock_upstream: str
):
    work = tmp_path_factory.mktemp("failover")
    with running_stack(pair.url, work, mock_upstream, gateways=2, workers=2) as stack:
        client = stack.clients[0]
        batch = start_batch(
            client,
            [
                responses_line(f"line-{i}", f"mock:sleep_ms={LINE_MS} {i}", "bulk")
                for i in range(BATCH_LINES)
            ],
        )
        load = Load(stack.clients)
        load.start()
        try:
            wait_until(
                lambda: load.count("flex", 200) >= 6 and load.count("background", 200) >= 6
                and load.count("realtime", 200) >= 6
                and client.batches.retrieve(batch.id).request_counts.completed > 0,
                "every kind of call answered and the batch under way",
                HEAL_TIMEOUT_S,
            )  # fmt: skip
            counts = client.batches.retrieve(batch.id).request_counts
            assert counts is not None and counts.completed < BATCH_LINES
            counted_before = counts.completed
            assert pair.sync_state() == "sync"  # every acknowledged commit is on the standby

            killed = time.time()
            pair.primary.kill()
            # No primary anywhere: the gateways say so (and clients get 503s) ...
            wait_until(
                lambda: all(readiness(g) == 503 for g in stack.gateways),
                "both gateways to report no database",
                30,
            )
            # (Flex and background clients mostly wait through it: their calls were accepted.)
            wait_until(lambda: load.count("realtime", 503, after=killed), "503s meanwhile", 30)
            # ... until the standby is promoted.
            # The CLI says what is wrong, in one line.
            cli = subprocess.run(
                [sys.executable, "-m", "app.cli", "keys", "list"],
                env=base_env(DATABASE_URL=stack.url.libpq()),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
            assert "no host is a writable primary; promote a standby" in cli.stderr, cli.stderr
            promoted = time.time()  # the request: processes may be back before pg_ctl returns
            pair.standby.promote()
            ready_s = [
                seconds_until(lambda g=g: readiness(g) == 200, "ready again", RECONNECT_S)
                for g in stack.gateways
            ]
            wait_until(
                lambda: load.count("flex", 200, after=promoted) > 0,
                "a flex answer after the promotion",
                RECONNECT_S,
            )
            first_flex = min(s.ended for s in load.seen if s.kind == "flex" and s.status == 200
                             and s.ended > promoted) - promoted  # fmt: skip
            # Every process LISTENs again on the new primary.
            listens: dict[str, float] = {}
            for name, log in stack.logs.items():
                channel = "tiergate-listen" if name.startswith("gateway") else "tiergate-work"
                listens[name] = wait_until(
                    lambda log=log, channel=channel: relistened(log, channel, promoted),
                    f"{name} to LISTEN again",
                    RECONNECT_S,
                )
            # Load goes on a while on the new primary, through both gateways.
            wait_until(
                lambda: all(load.count(kind, 200, after=promoted) >= 6 for kind in Load.KINDS),
                "calls of every kind answered after the promotion",
                HEAL_TIMEOUT_S,
            )
        finally:
            load.finish()
        statuses = check_answers(load)
        done = wait_until(lambda: batch_done(client, batch.id), "the batch", HEAL_TIMEOUT_S)
        check_batch(client, done, counted_before)
        accepted = check_accepted(stack, load)
        # Both workers ran work on the new primary.
        pids = {w.proc.pid for w in stack.workers if w.proc is not None}
        ran = sql(
            stack.url,
            "SELECT p.pid, min(r.finished_at) FROM requests r"
            " JOIN processes p ON p.id = r.claimed_by"
            " WHERE r.finished_at > to_timestamp(%s) GROUP BY p.pid",
            promoted,
        )
        workers_s = {pid: at.timestamp() - promoted for pid, at in ran}
        # Blocking flex clients that were waiting when the primary died, answered after. (One
        # whose row was being written at the kill was not accepted: its 503 came at once.)
        across = [s for s in load.seen if s.kind == "flex" and s.started < killed < s.ended]
        waited = [s for s in across if s.ended > promoted]
        assert waited and all(s.status == 200 for s in waited), across
        assert set(workers_s) == pids, workers_s
        twice = sql(
            stack.url,
            "SELECT count(*) FROM requests WHERE id = ANY(%s) AND attempts > 1",
            [s.request_id for s in load.seen if s.status == 200],
        )[0][0]
        print(
            f"\nfailover: killed at 0.0 s, promoted at {promoted - killed:.1f} s;"
            f" answers {dict(sorted(statuses.items()))}; accepted and completed {accepted};"
            f" batch lines {BATCH_LINES} ({counted_before} counted before the kill);"
            f" accepted calls run more than once upstream: {twice}; blocking flex calls"
            f" waiting through the failover and answered: {len(waited)} of {len(across)}\n"
            f"after the promotion: first flex answer {first_flex:.2f} s; /readyz 200"
            f" {', '.join(f'{s:.2f}' for s in ready_s)} s; LISTEN again"
            f" {', '.join(f'{n} {s:.2f}' for n, s in listens.items())} s; first request"
            f" finished per worker {', '.join(f'{s:.2f}' for s in sorted(workers_s.values()))} s"
        )
        assert max(ready_s + list(listens.values()) + list(workers_s.values())) <= RECONNECT_S
        no_tracebacks(stack)


@pytest.mark.timeout(OUTAGE_S + 240)
def test_primary_unreachable_for_a_while_gives_503s_then_everything_resumes(
    tmp_path_factory: pytest.TempPathFactory, mock_upstream: str
):
    """The only server down for ``OUTAGE_S``: writes answered 503 + retry-after at once,
    ``/readyz`` not ready all along, no process gives up; then it all resumes by itself."""
    work = tmp_path_factory.mktemp("outage")
    with (
        lone_server(work / "pg") as server,
        running_stack(server.url(), work, mock_upstream, gateways=1, workers=1) as stack,
    ):
        client = stack.clients[0]
        batch = start_batch(
            client,
            [
                responses_line(f"line-{i}", f"mock:sleep_ms={LINE_MS} {i}", "bulk")
                for i in range(BATCH_LINES)
            ],
        )
        background = [
            client.responses.create(
                model="remote", input=f"mock:sleep_ms=300 bg {i}", background=True,
                service_tier="flex",
            ).id
            for i in range(10)
        ]  # fmt: skip
        wait_until(
            lambda: client.batches.retrieve(batch.id).request_counts.completed > 0,
            "the batch under way",
            HEAL_TIMEOUT_S,
        )
        counts = client.batches.retrieve(batch.id).request_counts
        assert counts is not None and counts.completed < BATCH_LINES
        spare_file = upload(client, jsonl([responses_line("x", "down")]))

        server.kill()
        down = time.time()
        refused: Counter[str] = Counter()
        rounds = 0
        while time.time() - down < OUTAGE_S:
            rounds += 1
            ready = httpx.get(stack.gateways[0].url + "/readyz", timeout=10)
            assert ready.status_code == 503, ready.text
            assert ready.json()["error"]["code"] == "database_unavailable"
            for kind, call in writes(client, spare_file).items():
                started = time.monotonic()
                with pytest.raises(openai.APIStatusError) as caught:
                    call()
                assert time.monotonic() - started < 15, f"{kind} took its time"
                assert caught.value.status_code == 503, (kind, caught.value)
                assert caught.value.response.headers.get("retry-after"), kind
                refused[kind] += 1
            time.sleep(min(5.0, max(0.0, OUTAGE_S - (time.time() - down))))
        server.start()
        restarted = time.time()
        ready_s = seconds_until(
            lambda: readiness(stack.gateways[0]) == 200, "ready again", RECONNECT_S
        )
        healed = client.with_options(max_retries=3)  # a stale pooled connection may cost a 503
        flex = healed.responses.create(model="remote", input="after", service_tier="flex")
        first_flex_s = time.time() - restarted
        assert flex.output_text == "echo: after"
        for request_id in background:
            wait_until(
                lambda r=request_id: healed.responses.retrieve(r).status == "completed",
                f"background request {request_id}",
                HEAL_TIMEOUT_S,
            )
        done = wait_until(lambda: batch_done(healed, batch.id), "the batch", HEAL_TIMEOUT_S)
        check_batch(healed, done, counts.completed)
        listens = {
            name: wait_until(
                lambda log=log, name=name: relistened(
                    log, "tiergate-listen" if name.startswith("gateway") else "tiergate-work",
                    restarted,
                ),
                f"{name} to LISTEN again",
                RECONNECT_S,
            )
            for name, log in stack.logs.items()
        }  # fmt: skip
        print(
            f"\noutage of {restarted - down:.0f} s: {rounds} rounds of writes, all 503 with"
            f" retry-after {dict(refused)}; after the restart: /readyz 200 in {ready_s:.2f} s,"
            f" a flex answer in {first_flex_s:.2f} s, LISTEN again"
            f" {', '.join(f'{n} {s:.2f}' for n, s in listens.items())} s"
        )
        assert all(p.proc is not None and p.proc.poll() is None for p in [*stack.workers,
                   *(g.process for g in stack.gateways)]), "a process gave up"  # fmt: skip
        no_tracebacks(stack)


def writes(client: openai.OpenAI, input_file: str) -> dict[str, Callable[[], object]]:
    """One new write of each kind."""
    return {
        "realtime": lambda: client.responses.create(model="remote", input="down"),
        "flex": lambda: client.responses.create(model="remote", input="down", service_tier="flex"),
        "background": lambda: client.responses.create(
            model="remote", input="down", background=True, service_tier="flex"
        ),
        "batch": lambda: client.batches.create(
            input_file_id=input_file, endpoint="/v1/responses", completion_window="24h"
        ),
        "upload": lambda: upload(client, jsonl([responses_line("x", "down")])),
    }
