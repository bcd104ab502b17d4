"""Upstream chaos: 429 with Retry-After, 500/503, timeouts and dropped connections.

Real gateway and worker, the mock provider as its own process, the official SDK as client.
Each request names a ``key`` that the mock records on every arrival
(``/_mock/attempts/{key}``), so the attempts the provider saw and the gaps between them are
data, compared with the ``requests`` rows and with what the client got back.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.testing.config import write_config
from app.testing.processes import Gateway
from app.vocabulary import response_error_code
from tests.e2e.conftest import row
from tests.support.batches import jsonl, upload
from tests.support.waiting import wait_until

TIMEOUT_S = 60.0
RUN = uuid.uuid4().hex[:8]  # the mock outlives this module: keys must be new each run
RETRY_BASE_S = 0.5
JITTER = (0.8, 1.2)  # backoff_s's jitter around base * 2^(attempt - 1)
LATE_SLACK_S = 0.75  # how much later than its backoff a retry may reach the provider
MAX_ATTEMPTS = 3
TIMEOUT_SETTING_S = 1
SLOW_MS = 3000  # well past timeout_s
# An answer in 8 parts 400 ms apart: every wait for a part is under timeout_s, the whole is not.
TRICKLE_MS = 400
BEYOND_WINDOW_S = 100_000  # longer than the flex window (1 h) and the batch window (24 h)
MODES = ["blocking", "background"]


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    """Small timeout and backoff so that every kind of failure plays out in seconds."""
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "chaos",
                "upstream": f"{mock_upstream}/v1",
                "flex_concurrency": 32,
                "max_attempts": MAX_ATTEMPTS,
                "timeout_s": TIMEOUT_SETTING_S,
            },
            {
                "name": "chaos-long",
                "upstream": f"{mock_upstream}/v1",
                "max_attempts": 4,
                "timeout_s": 5,
            },
        ],
        {
            "retry_base_s": RETRY_BASE_S,
            # Failures these tests ask the mock for are per request, not an unhealthy provider:
            # the circuit breaker (tests/e2e/test_fleet.py) must not take it out of rotation.
            "health": {"failures_to_trip": 1000},
            "retry_max_s": 10,
            "waiter_recheck_s": 1.0,
            "maintenance_every_s": 1,
            "batch_chunk": 8,
        },
    )


@pytest.fixture(scope="module")
def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    """The SDK with its own default retries on: the gateway must tell it not to resubmit."""
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=2, timeout=TIMEOUT_S)


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Seen:
    """One arrival of a request at the mock provider."""

    at: float
    status: int
    drop: bool
    sleep_ms: float
    trickle_ms: float


def key_for(name: str, mode: str) -> str:
    return f"{name}-{mode}-{RUN}"


def attempts_at_mock(mock_upstream: str, key: str) -> list[Seen]:
    found = httpx.get(f"{mock_upstream}/_mock/attempts/{key}").json()
    assert found["key"] == key
    return [
        Seen(a["at"], a["status"], a["drop"], a["sleep_ms"], a["trickle_ms"])
        for a in found["attempts"]
    ]


def gaps(seen: list[Seen]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(seen)]


def rows_for_key(db: psycopg.Connection, key: str) -> list[tuple[str, str, int]]:
    """(id, status, attempts) of every request row whose body names ``key``."""
    return db.execute(
        "SELECT id, status, attempts FROM requests WHERE body::text LIKE %s ORDER BY created_at",
        (f"%key={key}%",),
    ).fetchall()


@dataclass
class Result:
    """What the client ended with: an answer, or an OpenAI error (HTTP or on the object)."""

    id: str
    output_text: str | None = None
    http_status: int | None = None
    headers: httpx.Headers | None = None
    error_code: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    status: str | None = None


def run_flex(sdk: openai.OpenAI, mode: str, text: str, model: str = "chaos") -> Result:
    """One flex request, blocking (the SDK waits) or background (polled by id)."""
    if mode == "blocking":
        try:
            raw = sdk.responses.with_raw_response.create(
                model=model, input=text, service_tier="flex"
            )
        except openai.APIStatusError as exc:
            assert isinstance(exc.body, dict), exc.body
            assert set(exc.body) == {"message", "type", "param", "code"}
            return Result(
                id=exc.response.headers["x-request-id"],
                http_status=exc.status_code,
                headers=exc.response.headers,
                error_code=exc.code,
                error_type=exc.type,
                error_message=exc.body["message"],
            )
        response = raw.parse()
        assert response.id == raw.headers["x-request-id"]
        return Result(
            id=response.id,
            output_text=response.output_text,
            http_status=raw.status_code,
            status=response.status,
        )
    # Usually "queued"; a quick worker may have claimed (or even ended) it already.
    queued = sdk.responses.create(model=model, input=text, background=True, service_tier="flex")
    assert queued.background and queued.id.startswith("resp_")
    final = wait_until(
        lambda: (
            (r := sdk.responses.retrieve(queued.id)).status not in ("queued", "in_progress") and r
        ),
        f"background {queued.id}",
    )
    Response.model_validate(final.model_dump())  # the SDK's type: OpenAI's error codes only
    return Result(
        id=final.id,
        output_text=final.output_text if final.status == "completed" else None,
        status=final.status,
        error_code=final.error.code if final.error else None,
        error_message=final.error.message if final.error else None,
    )


def shown_code(stored: str) -> str:
    """The code a Response object shows for a row's code (the row's leads its message)."""
    return response_error_code(stored)


def backoff_bounds(attempt: int) -> tuple[float, float]:
    """Earliest and latest a retry after ``attempt`` may reach the provider."""
    delay = RETRY_BASE_S * 2 ** (attempt - 1)
    return delay * JITTER[0], delay * JITTER[1] + LATE_SLACK_S


# --- flex: transient failures are retried, then succeed --------------------------------------

RECOVERING = [
    # name, controls, statuses the mock answered in turn
    ("429", "status=429,retry_after=1,fail_times=1", [429, 200]),
    ("500", "status=500,fail_times=2", [500, 500, 200]),
    ("503", "status=503,fail_times=2", [503, 503, 200]),
    ("slow", f"sleep_ms={SLOW_MS},fail_times=1", [200, 200]),  # the first answer came too late
    # ... or began in time but took too long to finish
    ("trickle", f"trickle_ms={TRICKLE_MS},fail_times=1", [200, 200]),
    ("drop", "drop=1,fail_times=1", [200, 200]),  # the first answer broke off mid-body
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("name", "controls", "statuses"), RECOVERING, ids=[r[0] for r in RECOVERING]
)
def test_flex_retries_transient_failures_then_succeeds(
    sdk: openai.OpenAI,
    db: psycopg.Connection,
    mock_upstream: str,
    mode: str,
    name: str,
    controls: str,
    statuses: list[int],
):
    key = key_for(name, mode)
    text = f"mock:{controls},key={key} recover"
    result = run_flex(sdk, mode, text)
    assert result.output_text == f"echo: {text}"
    assert result.status == "completed" and result.error_code is None

    seen = attempts_at_mock(mock_upstream, key)
    assert [s.status for s in seen] == statuses
    assert [s.drop for s in seen] == [name == "drop"] + [False] * (len(seen) - 1)
    assert [s.sleep_ms for s in seen] == [SLOW_MS if name == "slow" else 0] + [0] * (len(seen) - 1)
    trickled = TRICKLE_MS if name == "trickle" else 0
    assert [s.trickle_ms for s in seen] == [trickled] + [0] * (len(seen) - 1)
    tracked = row(db, result.id)
    assert (tracked["status"], tracked["attempts"]) == ("completed", len(statuses))
    assert tracked["error"] is None and tracked["response_status"] == 200
    assert rows_for_key(db, key) == [(result.id, "completed", len(statuses))]
    if name == "429":  # the retry waited for Retry-After (1 s), longer than the backoff
        assert gaps(seen)[0] >= 1.0
    else:
        for attempt, gap in enumerate(gaps(seen), start=1):
            earliest, latest = backoff_bounds(attempt)
            if name in ("slow", "trickle"):  # the first attempt lasted timeout_s, then backoff
                earliest += TIMEOUT_SETTING_S
                latest += TIMEOUT_SETTING_S
            assert earliest <= gap <= latest, (attempt, gap)


@pytest.mark.parametrize("mode", MODES)
def test_backoff_grows_between_500_retries(
    sdk: openai.OpenAI, db: psycopg.Connection, mock_upstream: str, mode: str
):
    key = key_for("grow", mode)
    text = f"mock:status=500,fail_times=3,key={key} grow"
    result = run_flex(sdk, mode, text, model="chaos-long")
    assert result.output_text == f"echo: {text}"
    seen = attempts_at_mock(mock_upstream, key)
    assert [s.status for s in seen] == [500, 500, 500, 200]
    assert row(db, result.id)["attempts"] == 4
    waited = gaps(seen)
    for attempt, gap in enumerate(waited, start=1):
        earliest, latest = backoff_bounds(attempt)
        assert earliest <= gap <= latest, (attempt, waited)
    assert waited[0] < waited[1] < waited[2], waited


# --- flex: failures that do not stop ---------------------------------------------------------

FOREVER = [
    # name, controls, attempts, the row's error code, what the mock answered
    ("500-forever", "status=500", MAX_ATTEMPTS, "upstream_500", 500),
    ("503-forever", "status=503", MAX_ATTEMPTS, "upstream_503", 503),
    # The provider's own code when it gives one (the mock's 429 says rate_limit_exceeded).
    ("429-forever", "status=429,retry_after=0", MAX_ATTEMPTS, "rate_limit_exceeded", 429),
    ("slow-forever", f"sleep_ms={SLOW_MS}", MAX_ATTEMPTS, "upstream_timeout", 200),
    ("trickle-forever", f"trickle_ms={TRICKLE_MS}", MAX_ATTEMPTS, "upstream_timeout", 200),
    ("drop-forever", "drop=1", MAX_ATTEMPTS, "upstream_connection_broken", 200),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("name", "controls", "attempts", "code", "answered"), FOREVER, ids=[f[0] for f in FOREVER]
)
def test_flex_gives_up_after_max_attempts_with_an_openai_error(
    sdk: openai.OpenAI,
    db: psycopg.Connection,
    mock_upstream: str,
    mode: str,
    name: str,
    controls: str,
    attempts: int,
    code: str,
    answered: int,
):
    key = key_for(name, mode)
    result = run_flex(sdk, mode, f"mock:{controls},key={key} never")
    assert result.error_message
    if mode == "blocking":  # README: 502, and the SDK is told not to resubmit
        assert result.error_code == code
        assert result.http_status == 502 and result.error_type == "server_error"
        assert result.headers is not None and result.headers["x-should-retry"] == "false"
    else:
        assert result.status == "failed" and result.error_code == shown_code(code)
        # The row's code leads the message, unless it is OpenAI's own code already.
        assert result.error_message.startswith("" if shown_code(code) == code else f"{code}: ")
    seen = attempts_at_mock(mock_upstream, key)
    assert [s.status for s in seen] == [answered] * attempts  # nothing more, nothing less
    tracked = row(db, result.id)
    assert (tracked["status"], tracked["attempts"]) == ("failed", attempts)
    assert tracked["error"]["code"] == code
    assert rows_for_key(db, key) == [(result.id, "failed", attempts)]  # no resubmission


@pytest.mark.parametrize("mode", MODES)
def test_flex_client_error_is_not_retried(
    sdk: openai.OpenAI, db: psycopg.Connection, mock_upstream: str, mode: str
):
    key = key_for("400", mode)
    result = run_flex(sdk, mode, f"mock:status=400,key={key} bad")
    if mode == "blocking":  # the provider's own status and OpenAI body
        assert result.http_status == 400 and result.error_type == "invalid_request_error"
        assert result.error_code is None and result.error_message == "mock status 400"
    else:
        assert result.status == "failed" and result.error_code == "invalid_prompt"
        assert result.error_message == "upstream_400: mock status 400"
    assert [s.status for s in attempts_at_mock(mock_upstream, key)] == [400]
    tracked = row(db, result.id)
    assert (tracked["status"], tracked["attempts"]) == ("failed", 1)
    assert tracked["response_status"] == 400
    assert rows_for_key(db, key) == [(result.id, "failed", 1)]


@pytest.mark.parametrize("mode", MODES)
def test_flex_retry_after_beyond_the_window_is_not_scheduled(
    sdk: openai.OpenAI, db: psycopg.Connection, mock_upstream: str, mode: str
):
    key = key_for("window", mode)
    result = run_flex(sdk, mode, f"mock:status=429,retry_after={BEYOND_WINDOW_S},key={key} x")
    assert result.error_message is not None and "Retry-After" in result.error_message
    if mode == "blocking":  # README: 429 request_expired, not to be resubmitted
        assert result.error_code == "request_expired"
        assert result.http_status == 429
        assert result.headers is not None and result.headers["x-should-retry"] == "false"
    else:  # OpenAI's flex tier answers a shortage of capacity with a rate limit
        assert result.status == "failed" and result.error_code == "rate_limit_exceeded"
        assert result.error_message.startswith("request_expired: ")
    assert [s.status for s in attempts_at_mock(mock_upstream, key)] == [429]
    tracked = row(db, result.id)
    assert (tracked["status"], tracked["attempts"]) == ("expired", 1)
    assert tracked["error"]["code"] == "request_expired"
    assert "Retry-After" in tracked["error"]["message"]
    assert rows_for_key(db, key) == [(result.id, "expired", 1)]


# --- realtime: never retried by the gateway ----------------------------------------------------

REALTIME = [
    # name, controls, the error code, what the row's message says
    ("slow", f"sleep_ms={SLOW_MS}", "upstream_timeout", "timed out"),
    ("trickle", f"trickle_ms={TRICKLE_MS}", "upstream_timeout", "no whole answer within 1 s"),
    ("drop", "drop=1", "upstream_connection_broken", "upstream connection broke"),
]


@pytest.mark.parametrize(
    ("name", "controls", "code", "says"), REALTIME, ids=[r[0] for r in REALTIME]
)
def test_realtime_upstream_failure_is_a_502_in_openai_form(
    client: openai.OpenAI,
    db: psycopg.Connection,
    mock_upstream: str,
    name: str,
    controls: str,
    code: str,
    says: str,
):
    """A realtime call gets one attempt; its failure is the client's to retry, and the row
    records it (not ``in_progress`` until the reaper, not a 500)."""
    mock_key = key_for(name, "realtime")
    with pytest.raises(openai.APIStatusError) as failed:
        client.responses.create(model="chaos", input=f"mock:{controls},key={mock_key} now")
    assert failed.value.status_code == 502
    assert isinstance(failed.value.body, dict)
    assert set(failed.value.body) == {"message", "type", "param", "code"}
    assert (failed.value.code, failed.value.type) == (code, "server_error")
    tracked = row(db, failed.value.response.headers["x-request-id"])
    assert (tracked["status"], tracked["service_tier"]) == ("failed", "default")
    assert tracked["error"]["code"] == code and says in tracked["error"]["message"]
    assert len(attempts_at_mock(mock_upstream, mock_key)) == 1


def test_realtime_stream_timeout_bounds_each_chunk_not_the_whole_stream(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    """A stream that takes longer than timeout_s in all, with every gap under it, is relayed
    whole: long generations must not be cut."""
    mock_key = key_for("trickle-stream", "realtime")
    text = f"mock:trickle_ms={TRICKLE_MS},key={mock_key} a long stream"
    events = list(client.responses.create(model="chaos", input=text, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == f"echo: {text}"
    (seen,) = attempts_at_mock(mock_upstream, mock_key)
    assert seen.trickle_ms == TRICKLE_MS and 7 * TRICKLE_MS / 1000 > TIMEOUT_SETTING_S
    assert recorded(db, mock_key)["status"] == "completed"


def recorded(db: psycopg.Connection, mock_key: str) -> dict[str, Any]:
    """The one request row whose body names ``mock_key``, once it is final."""
    (rid,) = db.execute(
        "SELECT id FROM requests WHERE body::text LIKE %s", (f"%key={mock_key}%",)
    ).fetchone()
    # The row is closed as the relay ends, possibly just after the client read its last byte.
    return wait_until(
        lambda: (found := row(db, rid))["status"] not in ("pending", "in_progress") and found,
        f"{rid} to be recorded",
    )


def test_realtime_response_stream_that_breaks_ends_with_an_error_event(
    client: openai.OpenAI, db: psycopg.Connection
):
    """The provider drops the connection mid-event: the client gets the whole events that
    reached the gateway, then an ``error`` event numbered after them, never half an event.
    (Bytes that arrive together with the break may be lost: aiohttp raises the break before
    handing them over, so the error can also be the only event.)"""
    mock_key = key_for("drop-stream", "realtime")
    text = f"mock:drop=1,key={mock_key} one two three four five six seven eight"
    *relayed, last = list(client.responses.create(model="chaos", input=text, stream=True))
    assert relayed == [] or relayed[0].type == "response.created"
    assert [e.sequence_number for e in relayed] == list(range(len(relayed)))
    assert "response.completed" not in {e.type for e in relayed}
    assert last.type == "error" and last.code == "upstream_stream_broken"
    assert last.sequence_number == len(relayed) and "broke" in last.message
    tracked = recorded(db, mock_key)
    assert tracked["status"] == "failed"
    assert tracked["error"]["code"] == "upstream_stream_broken"


def test_realtime_chat_stream_that_breaks_raises_in_the_sdk(
    client: openai.OpenAI, db: psycopg.Connection
):
    """Chat streams carry errors as a chunk holding ``error``, which the SDK raises."""
    mock_key = key_for("drop-chat-stream", "realtime")
    text = f"mock:drop=1,key={mock_key} one two three four five six seven eight"
    stream = client.chat.completions.create(
        model="chaos", messages=[{"role": "user", "content": text}], stream=True
    )
    chunks = []
    with pytest.raises(openai.APIError) as broke:
        for chunk in stream:
            chunks.append(chunk)
    assert chunks == [] or chunks[0].choices[0].delta.role == "assistant"
    assert broke.value.code == "upstream_stream_broken" and "broke" in broke.value.message
    assert recorded(db, mock_key)["error"]["code"] == "upstream_stream_broken"


# --- the Batch API ---------------------------------------------------------------------------


def chat_line(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "chaos", "messages": [{"role": "user", "content": text}]},
    }


def submit_batch(sdk: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    file_id = upload(sdk, jsonl(lines), "chaos.jsonl")
    batch = sdk.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    final = {"completed", "failed", "expired", "cancelled"}
    return wait_until(
        lambda: (b := sdk.batches.retrieve(batch.id)).status in final and b, f"batch {batch.id}"
    )


def result_lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).read().splitlines()]


# custom_id -> (controls, attempts, where it ends: status code in a file, or an error code)
BATCH = {
    "ok-0": ("", 1, 200),
    "ok-1": ("", 1, 200),
    "429": ("status=429,retry_after=1,fail_times=1", 2, 200),
    "500": ("status=500,fail_times=2", 3, 200),
    "503": ("status=503,fail_times=2", 3, 200),
    "slow": (f"sleep_ms={SLOW_MS},fail_times=1", 2, 200),
    "drop": ("drop=1,fail_times=1", 2, 200),
    "trickle": (f"trickle_ms={TRICKLE_MS},fail_times=1", 2, 200),
    "400": ("status=400", 1, 400),
    "500-forever": ("status=500", MAX_ATTEMPTS, 500),
    "503-forever": ("status=503", MAX_ATTEMPTS, 503),
    "429-forever": ("status=429,retry_after=0", MAX_ATTEMPTS, 429),
    "slow-forever": (f"sleep_ms={SLOW_MS}", MAX_ATTEMPTS, "upstream_timeout"),
    "trickle-forever": (f"trickle_ms={TRICKLE_MS}", MAX_ATTEMPTS, "upstream_timeout"),
    "drop-forever": ("drop=1", MAX_ATTEMPTS, "upstream_connection_broken"),
}


def batch_text(custom_id: str, controls: str) -> str:
    key = key_for(custom_id, "batch")
    return f"mock:{controls},key={key} {custom_id}" if controls else f"mock:key={key} {custom_id}"


def test_batch_mixing_every_failure_has_each_line_once(
    sdk: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    lines = [chat_line(cid, batch_text(cid, controls)) for cid, (controls, _, _) in BATCH.items()]
    done = submit_batch(sdk, lines)
    assert done.status == "completed"
    ok = [cid for cid, (_, _, end) in BATCH.items() if end == 200]
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (
        len(BATCH),
        len(ok),
        len(BATCH) - len(ok),
    )

    output = result_lines(sdk, done.output_file_id)
    errors = result_lines(sdk, done.error_file_id)
    assert [o["custom_id"] for o in output] == ok  # input order, each once
    assert [e["custom_id"] for e in errors] == [cid for cid in BATCH if cid not in ok]
    for line in output:
        text = batch_text(line["custom_id"], BATCH[line["custom_id"]][0])
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: {text}"
    for line in errors:
        end = BATCH[line["custom_id"]][2]
        if isinstance(end, int):  # the provider's last answer, its status and OpenAI body
            assert line["error"] is None
            assert line["response"]["status_code"] == end
            error = line["response"]["body"]["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        else:  # no HTTP answer at all: tiergate's own error
            assert line["response"] is None
            assert line["error"]["code"] == end and line["error"]["message"]

    tracked = db.execute(
        "SELECT custom_id, attempts, status FROM requests WHERE batch_id = %s", (done.id,)
    ).fetchall()
    assert len(tracked) == len(BATCH)  # one row per line
    assert {cid: attempts for cid, attempts, _ in tracked} == {
        cid: attempts for cid, (_, attempts, _) in BATCH.items()
    }
    for cid, (_, attempts, _) in BATCH.items():  # the provider saw exactly those calls
        seen = attempts_at_mock(mock_upstream, key_for(cid, "batch"))
        assert len(seen) == attempts, cid
    retry_after_gap = gaps(attempts_at_mock(mock_upstream, key_for("429", "batch")))
    assert retry_after_gap[0] >= 1.0


def test_batch_backoff_grows_between_500_retries(
    sdk: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    key = key_for("grow", "batch")
    line = chat_line("grow", f"mock:status=500,fail_times=3,key={key} grow")
    line["body"]["model"] = "chaos-long"
    done = submit_batch(sdk, [line])
    assert done.status == "completed" and done.request_counts.completed == 1
    seen = attempts_at_mock(mock_upstream, key)
    assert [s.status for s in seen] == [500, 500, 500, 200]
    waited = gaps(seen)
    for attempt, gap in enumerate(waited, start=1):
        earliest, latest = backoff_bounds(attempt)
        assert earliest <= gap <= latest, (attempt, waited)
    assert waited[0] < waited[1] < waited[2], waited


def test_batch_retry_after_beyond_the_window_is_not_scheduled(
    sdk: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    key = key_for("window", "batch")
    lines = [
        chat_line("fine", f"mock:key={key_for('fine', 'batch')} fine"),
        chat_line("late", f"mock:status=429,retry_after={BEYOND_WINDOW_S},key={key} late"),
    ]
    done = submit_batch(sdk, lines)
    # The line cannot finish inside the window: it expires now instead of waiting a day.
    assert done.status == "expired"
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    assert [o["custom_id"] for o in result_lines(sdk, done.output_file_id)] == ["fine"]
    (late,) = result_lines(sdk, done.error_file_id)
    assert late["custom_id"] == "late" and late["response"] is None
    assert late["error"]["code"] == "batch_expired"
    assert "Retry-After" in late["error"]["message"]
    assert [s.status for s in attempts_at_mock(mock_upstream, key)] == [429]
    tracked = db.execute(
        "SELECT status, attempts FROM requests WHERE batch_id = %s AND custom_id = 'late'",
        (done.id,),
    ).fetchall()
    assert tracked == [("expired", 1)]


def test_a_due_retry_is_not_held_behind_a_later_one(
    sdk: openai.OpenAI, db: psycopg.Connection
) -> None:
    """A worker wakes for the earliest of its retries: a retry due in 1 s put back before one
    due in 30 s still runs after about 1 s, not after 30 s."""

    def requeued(request_id: str) -> bool:
        tracked = row(db, request_id)
        return tracked["attempts"] == 1 and tracked["status"] == "pending"

    soon = sdk.responses.create(
        model="chaos-long",
        input=f"mock:status=503,retry_after=1,fail_times=1,key=soon-{RUN}",
        background=True,
        service_tier="flex",
    )
    wait_until(lambda: requeued(soon.id), "the first request to be put back (due in 1 s)")
    later = sdk.responses.create(
        model="chaos-long",
        input=f"mock:status=503,retry_after=30,fail_times=1,key=later-{RUN}",
        background=True,
        service_tier="flex",
    )
    wait_until(lambda: requeued(later.id), "the second request to be put back (due in 30 s)")
    done = wait_until(
        lambda: row(db, soon.id)["status"] == "completed" and row(db, soon.id),
        "the retry due first to run",
        timeout=10.0,  # far from the 30 s it would take behind the later retry's timer
    )
    assert done["attempts"] == 2
    sdk.responses.cancel(later.id)
