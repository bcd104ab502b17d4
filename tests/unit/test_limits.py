"""Rate-limit arithmetic: token estimates, OpenAI's reset format, slices, and the limiter
against an in-memory bucket that grants as the lease statement does."""

from __future__ import annotations

import argparse
import dataclasses
import math
from decimal import Decimal

import pytest

from app.calls.limits import (
    RateLimiter,
    estimate_tokens,
    reset_text,
    slice_of,
    wait_s,
)
from app.cli.keys import budget, per_minute
from app.keys import ApiKey, KeyLimits
from app.openai.errors import APIError
from app.store.limits import Lease
from app.store.requests import ClaimedRequest
from tests.support.rows import claimed


class FakeBucket:
    """One key's bucket as ``LEASE`` computes it, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.requests: float | None = None
        self.tokens = 0.0
        self.at = 0.0
        self.leases = 0

    async def lease(
        self,
        key_id: str,
        *,
        rpm: float,
        tpm: float,
        need: tuple[float, float],
        want: tuple[float, float],
    ) -> Lease:
        self.leases += 1
        if self.requests is None:
            r, t = rpm, tpm
        else:
            elapsed = self.now - self.at
            r = min(rpm, self.requests + rpm / 60 * elapsed)
            t = min(tpm, self.tokens + tpm / 60 * elapsed)
        ok = r >= need[0] and t >= need[1]
        gr = max(need[0], min(want[0], math.floor(r))) if ok else 0
        gt = max(need[1], min(want[1], math.floor(t))) if ok else 0
        self.requests, self.tokens, self.at = r - gr, t - gt, self.now
        return Lease(gr, gt, self.requests, self.tokens)


def key(**limits: int) -> ApiKey:
    return ApiKey(id="key_1", name="k", models=None, limits=KeyLimits(**limits))  # type: ignore[arg-type]


def test_estimate_counts_input_and_the_output_allowed():
    assert estimate_tokens({"input": "x" * 9}) == 3
    assert estimate_tokens({"input": "abcd", "max_output_tokens": 50}) == 51
    chat = {"messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 7}
    assert estimate_tokens(chat) == 2 + 7
    assert estimate_tokens({"input": [1, 2, 3]}) == 3  # token ids
    assert estimate_tokens({"input": "", "max_output_tokens": -4}) == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.02, "20ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (59.9, "59.9s"),
     (60, "1m0s"), (360, "6m0s"), (61.25, "1m1.25s"), (3723, "1h2m3s")],
)  # fmt: skip
def test_reset_is_spelled_as_openai_does(seconds: float, text: str):
    assert reset_text(seconds) == text


def test_slices_are_a_second_of_the_rate_and_at_least_one():
    assert slice_of(3) == 1
    assert slice_of(600) == 10
    assert slice_of(200_000) == 3333
    assert wait_s(0.5, 1, 60) == pytest.approx(0.5)
    assert wait_s(2, 1, 60) == 0


async def test_rpm_admits_the_limit_then_refuses_with_retry_after():
    bucket = FakeBucket()
    limiter = RateLimiter(bucket)  # type: ignore[arg-type]
    k = key(rpm=3)
    seen = [await limiter.admit(k, 10) for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert seen[0]["x-ratelimit-limit-requests"] == "3"
    assert seen[-1]["x-ratelimit-reset-requests"] == "1m0s"
    assert "x-ratelimit-limit-tokens" not in seen[0]  # no tpm: no tokens trio
    with pytest.raises(APIError) as info:
        await limiter.admit(k, 10)
    assert info.value.status == 429 and info.value.code == "rate_limit_exceeded"
    assert info.value.type == "requests"
    assert info.value.headers["retry-after"] == "20"  # one request refills in 60/3 s
    bucket.now = 20.0
    await limiter.admit(k, 10)


async def test_tokens_are_corrected_after_the_call():
    bucket = FakeBucket()
    limiter = RateLimiter(bucket)  # type: ignore[arg-type]
    k = key(tpm=100)
    await limiter.admit(k, 60)
    with pytest.raises(APIError) as info:  # 100 - 60 left, minus the slice
        await limiter.admit(k, 60)
    assert info.value.type == "tokens"
    limiter.settle("key_1", 60, 10)  # the call used 10: 50 come back
    headers = await limiter.admit(k, 60)
    assert headers["x-ratelimit-limit-tokens"] == "100"
    with pytest.raises(APIError) as info:
        await limiter.admit(k, 500)  # more than a minute's worth: never admitted
    assert "Request too large" in info.value.message
    assert info.value.headers["retry-after"] == "60"


async def test_a_busy_key_leases_about_once_a_second_not_per_call():
    bucket = FakeBucket()
    limiter = RateLimiter(bucket)  # type: ignore[arg-type]
    k = key(rpm=6000, tpm=10_000_000)
    for _ in range(100):
        await limiter.admit(k, 100)
    assert bucket.leases <= 2  # slices of 100 requests and 166,666 tokens


def test_cli_limits_parse_or_say_why():
    assert per_minute("600") == 600
    assert per_minute("0") is None and per_minute("none") is None
    assert budget("12.50") == Decimal("12.50") and budget("none") is None
    for bad in ("-1", "abc", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            per_minute(bad)
    for bad in ("-1", "nan", "inf", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            budget(bad)


async def test_the_pacer_runs_what_the_bucket_covers_and_spaces_the_rest():
    from worker.pacing import Pacer

    bucket = FakeBucket()
    pacer = Pacer(bucket)  # type: ignore[arg-type]
    rows = [
        claimed(id=f"r{n}", owner_key_id="key_1", rpm=6, tpm=None, body={"input": "x"})
        for n in range(9)
    ] + [claimed(id="free", owner_key_id="key_2", rpm=None, tpm=None, body={})]
    run, wait = await pacer.split(rows)
    assert [r.id for r in run] == ["free", "r0", "r1", "r2", "r3", "r4", "r5"]
    # The bucket is empty: one request every 10 s, booked one after the other.
    assert [round(delay) for _, delay in wait] == [10, 20, 30]
    later = [dataclasses.replace(rows[0], id="r9")]
    _, wait = await pacer.split(later)  # booked after the three already waiting
    assert round(wait[0][1]) == 40


async def test_the_pacer_corrects_leased_tokens_by_what_calls_used():
    from app.calls.limits import estimate_tokens
    from app.store.outcomes import Outcome
    from app.token_usage import TokenUsage
    from app.vocabulary import Status
    from worker.pacing import Pacer

    bucket = FakeBucket()
    pacer = Pacer(bucket)  # type: ignore[arg-type]
    body = {"input": "x" * 400}
    estimate = estimate_tokens(body)

    def row(n: int) -> ClaimedRequest:
        return claimed(id=f"r{n}", owner_key_id="key_1", rpm=None, tpm=6000, body=body)

    run, _ = await pacer.split([row(0)])
    assert len(run) == 1 and bucket.tokens == 6000 - estimate
    used = Outcome(status=Status.COMPLETED, usage=TokenUsage(total=estimate - 60))
    pacer.settle(row(0), used)  # 60 tokens fewer than leased: the next row needs 60 less
    await pacer.split([row(1)])
    assert bucket.tokens == 6000 - estimate - (estimate - 60)
    pacer.settle(row(1), None)  # retried: it used nothing, all of its estimate comes back
    before = bucket.tokens
    run, _ = await pacer.split([row(2)])
    assert len(run) == 1 and bucket.tokens == before  # covered by the credit alone
    over = Outcome(status=Status.COMPLETED, usage=TokenUsage(total=estimate + 500))
    pacer.settle(row(2), over)  # 500 more than leased: owed, leased with the next row
    await pacer.split([row(3)])
    assert bucket.tokens == before - (estimate + 500)
