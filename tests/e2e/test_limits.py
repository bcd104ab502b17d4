"""Rate limits and budgets per key, end to end, on two gateways sharing one database.

Realtime calls over a key's rpm/tpm get OpenAI's 429 ``rate_limit_exceeded`` with
``retry-after``; every answer to a limited key carries the ``x-ratelimit-*`` headers; a spent
budget answers 429 ``insufficient_quota`` on every tier while accepted work finishes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, base_env, create_key, start_gateway
from tests.support.batches import responses_line, start_batch
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

RESET = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(ms|s))$")


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "priced",
                "upstream": f"{mock_upstream}/v1",
                "pricing": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
            }
        ],
        {"maintenance_every_s": 1, "batch_chunk": 4},
    )


@pytest.fixture(scope="module")
def second_gateway(
    database: DatabaseURL, gateway_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=gateway_config,
        log=tmp_path_factory.mktemp("logs") / "gateway-b.log",
        worker=False,
    )
    yield gw
    gw.process.stop()


def sdk(gateway: Gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=secret, max_retries=0, timeout=60)


def cli(database: DatabaseURL, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", *args],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database.libpq()),
        capture_output=True,
        text=True,
        timeout=60,
    )


def ask(client: openai.OpenAI, text: str = "hi", **extra: object) -> Response:
    return client.responses.create(model="priced", input=text, **extra)  # type: ignore[arg-type]


def test_rpm_over_the_limit_is_429_with_retry_after_and_headers_on_2xx(
    gateway: Gateway, database: DatabaseURL
):
    client = sdk(gateway, create_key(database.libpq(), "rpm3", options=["--rpm", "3"]))
    remaining = []
    for _ in range(3):
        raw = client.responses.with_raw_response.create(model="priced", input="hi")
        assert raw.http_response.status_code == 200
        assert raw.parse().status == "completed"
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert RESET.match(raw.headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in raw.headers  # the key has no tpm
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "requests"
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 20  # one request refills in 60/3 s
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # Chat completions are limited by the same bucket.
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])


def test_streams_carry_the_headers_too(gateway: Gateway, database: DatabaseURL):
    client = sdk(gateway, create_key(database.libpq(), "streamer", options=["--rpm", "50"]))
    raw = client.responses.with_raw_response.create(model="priced", input="hi", stream=True)
    assert raw.headers["x-ratelimit-limit-requests"] == "50"
    assert raw.headers["x-ratelimit-remaining-requests"] == "49"
    events = list(raw.parse())
    assert events[-1].type == "response.completed"


def test_tpm_counts_estimated_tokens_and_corrects_them(gateway: Gateway, database: DatabaseURL):
    client = sdk(gateway, create_key(database.libpq(), "tpm", options=["--tpm", "300"]))
    # Estimated at 1 + 200 tokens; the call uses far fewer, which the key gets back.
    for _ in range(3):
        raw = client.responses.with_raw_response.create(
            model="priced", input="hi", max_output_tokens=200
        )
        assert raw.headers["x-ratelimit-limit-tokens"] == "300"
        assert 0 <= int(raw.headers["x-ratelimit-remaining-tokens"]) < 300
        assert RESET.match(raw.headers["x-ratelimit-reset-tokens"])
    with pytest.raises(openai.RateLimitError) as info:  # more than a minute's worth
        ask(client, max_output_tokens=400)
    assert info.value.code == "rate_limit_exceeded" and info.value.type == "tokens"
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_limits_hold_across_two_gateways(
    gateway: Gateway, second_gateway: Gateway, database: DatabaseURL
):
    secret = create_key(database.libpq(), "shared", options=["--rpm", "2"])
    clients = [sdk(gateway, secret), sdk(second_gateway, secret)]
    started = time.monotonic()
    admitted = refused = 0
    for n in range(8):
        try:
            ask(clients[n % 2])
            admitted += 1
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded"
            refused += 1
    # One request refills every 30 s: a slow run may see one more.
    assert admitted == 2 or (admitted == 3 and time.monotonic() - started > 25)
    assert admitted + refused == 8


def test_flex_and_background_over_the_limit_are_accepted_not_refused(
    gateway: Gateway, database: DatabaseURL
):
    # rpm 30: the bucket holds 30 requests and refills one every 2 s, so the paced flex and
    # background calls run a few seconds after the realtime calls emptied it.
    client = sdk(gateway, create_key(database.libpq(), "flexrpm", options=["--rpm", "30"]))
    for _ in range(60):  # until the bucket is empty (a slow run refills a few meanwhile)
        try:
            ask(client)
        except openai.RateLimitError:
            break
    else:
        pytest.fail("60 realtime calls at rpm 30 were never limited")
    flex = ask(client, service_tier="flex")
    assert flex.status == "completed"
    queued = ask(client, background=True)
    assert queued.status in ("queued", "in_progress", "completed")
    wait_until(
        lambda: client.responses.retrieve(queued.id).status == "completed",
        "the background call to complete",
    )


def test_keys_update_takes_effect_on_every_gateway(
    gateway: Gateway, second_gateway: Gateway, database: DatabaseURL
):
    secret = create_key(database.libpq(), "changing")
    clients = [sdk(gateway, secret), sdk(second_gateway, secret)]
    for client in clients:  # cached without limits in both
        assert (
            "x-ratelimit-limit-requests"
            not in client.responses.with_raw_response.create(model="priced", input="hi").headers
        )
    done = cli(database, "update", "changing", "--rpm", "1", "--tpm", "100000")
    assert done.returncode == 0, done.stderr
    assert "rpm 1, tpm 100000" in done.stdout

    def limited(client: openai.OpenAI) -> bool:
        try:
            raw = client.responses.with_raw_response.create(model="priced", input="hi")
        except openai.RateLimitError:
            return True
        return raw.headers.get("x-ratelimit-limit-requests") == "1"

    for client in clients:
        wait_until(lambda c=client: limited(c), "the new limit", timeout=2.0)
    done = cli(database, "update", "changing", "--rpm", "none", "--tpm", "0")
    assert done.returncode == 0, done.stderr
    for client in clients:
        wait_until(
            lambda c=client: (
                "x-ratelimit-limit-requests"
                not in c.responses.with_raw_response.create(model="priced", input="hi").headers
            ),
            "the limit to be lifted",
            timeout=2.0,
        )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rpm", "-5"], "must not be negative"),
        (["--tpm", "lots"], "expected a whole number"),
        (["--rpm", "1.5"], "expected a whole number"),
        (["--budget-usd", "-1"], "must be a finite amount"),
        (["--budget-usd", "nan"], "must be a finite amount"),
        (["--budget-usd", "5", "--budget-period", "week"], "invalid choice"),
        (["--budget-period", "day"], "--budget-period needs --budget-usd"),
    ],
)
def test_bad_limits_are_rejected_with_a_message(database: DatabaseURL, args: list[str], says: str):
    done = cli(database, "create", "--name", "bad", *args)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    done = cli(database, "update", "nobody", *args)
    assert done.returncode != 0 and "Traceback" not in done.stderr


def test_a_spent_budget_refuses_new_work_on_every_tier(
    gateway: Gateway, second_gateway: Gateway, database: DatabaseURL
):
    # A few calls' worth: each costs about (input x 3 + output x 15) / 1e6 USD.
    secret = create_key(
        database.libpq(), "budgeted", options=["--budget-usd", "0.0002", "--budget-period", "day"]
    )
    client = sdk(gateway, secret)
    accepted = start_batch(client, [responses_line(f"l{n}", "x" * 40, "priced") for n in range(12)])

    def spent() -> bool:
        try:
            ask(client, "spend " * 20)
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            return True
        return False

    wait_until(spent, "the budget to be spent", timeout=30)
    for c in (client, sdk(second_gateway, secret)):
        with pytest.raises(openai.RateLimitError) as info:
            ask(c)
        assert info.value.code == "insufficient_quota"
        with pytest.raises(openai.RateLimitError) as info:
            ask(c, service_tier="flex")
        assert info.value.code == "insufficient_quota"
        with pytest.raises(openai.RateLimitError) as info:
            start_batch(c, [responses_line("late", "x", "priced")])
        assert info.value.code == "insufficient_quota"
    # The batch accepted before goes on to the end.
    wait_until(
        lambda: client.batches.retrieve(accepted.id).status == "completed",
        "the accepted batch to complete",
    )
    assert client.batches.retrieve(accepted.id).request_counts.completed == 12  # type: ignore[union-attr]
    with psycopg.connect(database.libpq(), autocommit=True) as db:
        row = db.execute(
            "SELECT budget_usd, spent_usd, remaining_usd, (SELECT sum(cost_usd) FROM requests r"
            " JOIN api_keys k ON k.id = r.owner_key_id WHERE k.name = 'budgeted')"
            " FROM tiergate_budgets WHERE key_name = 'budgeted'"
        ).fetchone()
    assert row is not None
    budget, spent_usd, remaining, summed = row
    assert budget == Decimal("0.0002") and remaining == 0
    assert spent_usd == summed > budget  # the running total is the sum over its requests
    listed = cli(database, "list")
    line = next(x for x in listed.stdout.splitlines() if " budgeted " in x)
    assert "budget=0.0002/day" in line and "remaining=0.0000" in line
    assert f"spent={spent_usd:.4f}" in line
    usage = subprocess.run(
        [sys.executable, "-m", "app.cli", "usage", "--key", "budgeted"],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database.libpq()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "budget of budgeted: 0.0002 USD per day" in usage.stdout
    assert f"spent {spent_usd:.4f}, remaining 0.0000" in usage.stdout


def finish_times(database: DatabaseURL, key_name: str, n: int) -> list[float]:
    """Finish times (epoch s) of the key's ``n`` deferred requests, once all completed."""

    def done() -> list[float] | None:
        with psycopg.connect(database.libpq(), autocommit=True) as db:
            rows = db.execute(
                "SELECT extract(epoch FROM finished_at)::float8 FROM requests r"
                " JOIN api_keys k ON k.id = r.owner_key_id"
                " WHERE k.name = %s AND r.service_tier = 'flex' AND r.status = 'completed'"
                " ORDER BY finished_at",
                (key_name,),
            ).fetchall()
        return [t for (t,) in rows] if len(rows) == n else None

    found = wait_until(done, f"{n} requests of {key_name} to complete", timeout=60)
    return found


def test_flex_over_the_limit_runs_at_the_keys_rate(gateway: Gateway, database: DatabaseURL):
    # 30 rpm: a full bucket (30) at once, then one every 2 s.
    client = sdk(gateway, create_key(database.libpq(), "paced", options=["--rpm", "30"]))
    accepted = [ask(client, f"n{n}", service_tier="flex", background=True) for n in range(34)]
    assert all(r.status in ("queued", "in_progress", "completed") for r in accepted)
    times = finish_times(database, "paced", 34)
    tail = times[-1] - times[29]  # the 4 beyond the burst, 2 s apart: about 8 s
    assert 5.0 <= tail <= 20.0, f"the last 4 took {tail:.1f}s"
    assert times[29] - times[0] < 5.0  # the burst ran at once


def test_batch_lines_over_the_limit_run_at_the_keys_rate(gateway: Gateway, database: DatabaseURL):
    # 60 rpm: 60 lines at once, then one a second.
    client = sdk(gateway, create_key(database.libpq(), "paced-batch", options=["--rpm", "60"]))
    batch = start_batch(client, [responses_line(f"l{n}", "x", "priced") for n in range(65)])
    times = finish_times(database, "paced-batch", 65)
    tail = times[-1] - times[59]  # 5 lines, 1 s apart: about 5 s
    assert 3.0 <= tail <= 20.0, f"the last 5 lines took {tail:.1f}s"
    wait_until(
        lambda: client.batches.retrieve(batch.id).status == "completed",
        "the paced batch to complete",
    )
