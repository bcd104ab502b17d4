"""Rate limits and budgets of keys, as a gateway enforces them.

**Rate limits.** Each limited key has a token bucket in PostgreSQL (``app/store/limits.py``)
holding up to one minute's worth of requests and tokens, refilled continuously. A gateway
leases a slice of about one second's worth (:data:`SLICE_S`) in one statement and spends it
locally; only when its slice cannot cover a call does it lease again. Leases never take more
than the bucket holds, so N gateways together admit at most what one bucket would, plus the
slices they hold and have not spent yet (at most N x one second's worth), plus the tokens by
which the real usage exceeded the estimate (corrected after the call, see :meth:`settle`).

**Budgets.** What a budgeted key spent this period is read from ``key_spend`` (one row, kept
as a running total by the statements that store costs) and cached for :data:`SPEND_TTL_S`.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.keys import ApiKey, KeyLimits
from app.openai.errors import APIError
from app.openai.usage import CHARS_PER_TOKEN, _chars
from app.store.limits import LimitStore, Spend
from app.vocabulary import LimitCode, LimitKind, RateLimitHeader

SLICE_S = 1.0  # a lease takes this many seconds' worth of a key's rate (at least 1 of each)
SPEND_TTL_S = 1.0  # a budget check trusts the spend it read this long
UNLIMITED = 1e15  # the rate of a dimension without a limit
WINDOW_S = 60.0  # rpm and tpm: per minute


def estimate_tokens(body: dict[str, Any]) -> int:
    """Tokens a call may use, before it runs: ceil(characters / 4) of its input text (as
    ``app/openai/usage.py`` estimates) plus the output tokens it allows, if it says."""
    chars, ids = _chars([body.get("instructions"), body.get("input"), body.get("messages")])
    given = math.ceil(chars / CHARS_PER_TOKEN) + ids
    most = 0
    for name in ("max_output_tokens", "max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if type(value) is int and value > 0:
            most = value
            break
    return given + most


def reset_text(seconds: float) -> str:
    """A duration as OpenAI's reset headers spell it: ``20ms``, ``1s``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(round(seconds, 3), 60)
    if minutes < 60:
        return f"{int(minutes)}m{rest:g}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes}m{rest:g}s"


@dataclass
class Allowance:
    """One key's slice in this process, and the bucket as its last lease left it."""

    requests: float = 0.0
    tokens: float = 0.0  # below 0: real usage exceeded the estimates (paid at the next lease)
    bucket_requests: float = 0.0
    bucket_tokens: float = 0.0
    seen_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _rates(limits: KeyLimits) -> tuple[float, float]:
    return (
        float(limits.rpm) if limits.rpm is not None else UNLIMITED,
        float(limits.tpm) if limits.tpm is not None else UNLIMITED,
    )


def slice_of(per_minute: float) -> float:
    """What one lease asks for: SLICE_S worth of a per-minute rate, at least 1."""
    return max(1.0, math.floor(per_minute * SLICE_S / WINDOW_S))


def wait_s(have: float, need: float, per_minute: float) -> float:
    """Seconds until a bucket holding ``have`` refills to ``need``."""
    return 0.0 if have >= need else (need - have) * WINDOW_S / per_minute


class RateLimiter:
    """Admits realtime calls of limited keys from leased slices of their buckets."""

    def __init__(self, store: LimitStore) -> None:
        self.store = store
        self._keys: dict[str, Allowance] = {}

    def _allowance(self, key_id: str) -> Allowance:
        allowance = self._keys.get(key_id)
        if allowance is None:
            allowance = self._keys[key_id] = Allowance()
        return allowance

    async def admit(self, key: ApiKey, tokens: int) -> dict[str, str]:
        """Take one request and ``tokens`` for ``key``; the x-ratelimit headers of the answer.
        Raises a 429 ``rate_limit_exceeded`` (with ``retry-after``) when the key is over."""
        limits = key.limits
        rpm, tpm = _rates(limits)
        allowance = self._allowance(key.id)
        async with allowance.lock:
            if allowance.requests < 1 or allowance.tokens < tokens:
                need_r = 0.0 if allowance.requests >= 1 else 1.0
                need_t = max(0.0, tokens - allowance.tokens)
                want_r = slice_of(rpm) if need_r else 0.0
                want_t = need_t + slice_of(tpm) if need_t else 0.0
                lease = await self.store.lease(
                    key.id, rpm=rpm, tpm=tpm, need=(need_r, need_t), want=(want_r, want_t)
                )
                allowance.bucket_requests = lease.bucket_requests
                allowance.bucket_tokens = lease.bucket_tokens
                allowance.seen_at = time.monotonic()
                if lease.requests < need_r or lease.tokens < need_t:
                    raise self._refusal(key, allowance, need_r, need_t)
                allowance.requests += lease.requests
                allowance.tokens += lease.tokens
            allowance.requests -= 1
            allowance.tokens -= tokens
            return self.headers(key, allowance)

    def settle(self, key_id: str, estimated: int, actual: int) -> None:
        """Correct a call's tokens once its real usage is known."""
        allowance = self._keys.get(key_id)
        if allowance is not None:
            allowance.tokens += estimated - actual

    def headers(self, key: ApiKey, allowance: Allowance) -> dict[str, str]:
        rpm, tpm = _rates(key.limits)
        elapsed = time.monotonic() - allowance.seen_at
        out: dict[str, str] = {}
        for limit, per_minute, bucket, local, names in (
            (key.limits.rpm, rpm, allowance.bucket_requests, allowance.requests, _REQUESTS),
            (key.limits.tpm, tpm, allowance.bucket_tokens, allowance.tokens, _TOKENS),
        ):
            if limit is None:
                continue
            refilled = min(per_minute, bucket + per_minute / WINDOW_S * elapsed)
            remaining = max(0, min(limit, math.floor(refilled + local)))
            out[names[0]] = str(limit)
            out[names[1]] = str(remaining)
            out[names[2]] = reset_text(wait_s(remaining, limit, per_minute))
        return out

    def _refusal(self, key: ApiKey, allowance: Allowance, need_r: float, need_t: float) -> APIError:
        rpm, tpm = _rates(key.limits)
        limits = key.limits
        wait_r = wait_s(allowance.bucket_requests, need_r, rpm)
        too_big = limits.tpm is not None and need_t > limits.tpm
        wait_t = wait_s(allowance.bucket_tokens, need_t, tpm)
        if wait_r >= wait_t and not too_big:
            kind, wait = LimitKind.REQUESTS, wait_r
            message = (
                f"Rate limit reached for key '{key.name}' on requests per minute (RPM):"
                f" limit {limits.rpm}. Please try again in {reset_text(wait_r)}."
            )
        elif too_big:
            kind, wait = LimitKind.TOKENS, WINDOW_S
            message = (
                f"Request too large for key '{key.name}' on tokens per minute (TPM): limit"
                f" {limits.tpm}, requested about {math.ceil(need_t)}. Send fewer tokens"
                " (input, or max_output_tokens)."
            )
        else:
            kind, wait = LimitKind.TOKENS, wait_t
            message = (
                f"Rate limit reached for key '{key.name}' on tokens per minute (TPM): limit"
                f" {limits.tpm}. Please try again in {reset_text(wait_t)}."
            )
        headers = self.headers(key, allowance)
        headers[RateLimitHeader.RETRY_AFTER] = str(max(1, math.ceil(wait)))
        return APIError(
            429, message, type=kind, code=LimitCode.RATE_LIMIT_EXCEEDED, headers=headers
        )


_REQUESTS = (
    RateLimitHeader.LIMIT_REQUESTS,
    RateLimitHeader.REMAINING_REQUESTS,
    RateLimitHeader.RESET_REQUESTS,
)
_TOKENS = (
    RateLimitHeader.LIMIT_TOKENS,
    RateLimitHeader.REMAINING_TOKENS,
    RateLimitHeader.RESET_TOKENS,
)


@dataclass
class _Cached:
    spend: Spend | None
    read_at: float


class Budgets:
    """Refuses new calls of keys that spent their budget (cached for SPEND_TTL_S)."""

    def __init__(self, store: LimitStore, ttl_s: float = SPEND_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._spent: dict[str, _Cached] = {}
        self._reads: dict[str, asyncio.Future[Spend | None]] = {}

    async def check(self, key: ApiKey) -> None:
        """Raise a 429 ``insufficient_quota`` if ``key`` has a budget and it is spent."""
        if key.limits.budget_usd is None:
            return
        cached = self._spent.get(key.id)
        now = time.monotonic()
        if cached is None or now - cached.read_at >= self.ttl_s:
            read = self._reads.get(key.id)
            if read is None:
                read = asyncio.ensure_future(self.store.spent(key.id))
                self._reads[key.id] = read
                read.add_done_callback(lambda _: self._reads.pop(key.id, None))
            spend = await asyncio.shield(read)
            cached = self._spent[key.id] = _Cached(spend, time.monotonic())
        spend = cached.spend
        if spend is not None and spend.remaining_usd <= Decimal(0):
            raise APIError(
                429,
                f"Key '{key.name}' has spent its budget of {spend.budget_usd} USD"
                f" for this {key.limits.budget_period} ({spend.spent_usd} USD spent).",
                type=LimitCode.INSUFFICIENT_QUOTA,
                code=LimitCode.INSUFFICIENT_QUOTA,
            )

    def forget(self, key_id: str) -> None:
        """A key changed: read its spend again at its next call."""
        self._spent.pop(key_id, None)
