"""Flex, background and batch work of a rate-limited key runs at the key's rate.

Such work is never refused: after a claim, the worker leases what the claimed rows of each
limited key need from the key's bucket (the one realtime calls take from, see
``app/store/limits.py``), runs the rows it covers and puts the others back in the queue with
``not_before`` spaced at the key's rate (one request per ``60/rpm`` s, or its estimated
tokens at ``tpm``). At their time they are claimed and leased again, so the bucket, shared by
every gateway and worker, decides; the spacing only saves claiming them too early.

Tokens are leased by estimate and corrected once a call's real usage is known (``settle``):
the difference is a credit (or a debt) of the key in this worker, spent on (or added to) what
its next rows need before anything more is leased, as a gateway does with its slice.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from app.calls.limits import UNLIMITED, WINDOW_S, estimate_tokens, wait_s
from app.store.limits import LimitStore
from app.store.outcomes import Outcome
from app.store.requests import ClaimedRequest
from app.vocabulary import LimitCode, Status

MIN_DELAY_S = 0.05
# Stored on a row waiting for its key's rate (replaced by its outcome when it runs).
PACED = {
    "code": str(LimitCode.RATE_LIMIT_EXCEEDED),
    "message": "Waiting for the key's rate limit (rpm/tpm); it runs at the key's rate.",
}


def _rate(value: Any) -> float:
    return float(value) if value is not None else UNLIMITED


class Pacer:
    """Splits claimed rows into those that run now and those that wait for their key."""

    def __init__(self, store: LimitStore) -> None:
        self.store = store
        self._booked: dict[str, float] = {}  # per key: when its next waiting row is due
        self._credit: dict[str, float] = {}  # per key: tokens leased but not used (< 0: owed)

    async def split(
        self, rows: Sequence[ClaimedRequest]
    ) -> tuple[list[ClaimedRequest], list[tuple[ClaimedRequest, float]]]:
        """(rows to run now, [(row, seconds it waits)]); rows of keys without limits always
        run."""
        run: list[ClaimedRequest] = []
        wait: list[tuple[ClaimedRequest, float]] = []
        limited: dict[str, list[ClaimedRequest]] = defaultdict(list)
        for row in rows:
            if row.rpm is None and row.tpm is None:
                run.append(row)
            else:
                limited[row.owner_key_id].append(row)
        for key_id, group in limited.items():
            rpm, tpm = _rate(group[0].rpm), _rate(group[0].tpm)
            # A row estimated above a minute's worth runs once the bucket is full.
            estimates = [min(float(estimate_tokens(r.body or {})), tpm) for r in group]
            credit = self._credit.pop(key_id, 0.0)
            lease = await self.store.lease(
                key_id,
                rpm=rpm,
                tpm=tpm,
                need=(0.0, 0.0),
                want=(len(group), max(0.0, sum(estimates) - credit)),
            )
            requests, tokens = lease.requests, lease.tokens + credit
            now = time.monotonic()
            for row, estimate in zip(group, estimates, strict=True):
                if requests >= 1 and tokens >= estimate:
                    run.append(row)
                    requests, tokens = requests - 1, tokens - estimate
                    continue
                first = now + max(
                    wait_s(lease.bucket_requests, 1, rpm),
                    wait_s(lease.bucket_tokens, estimate, tpm),
                )
                due = max(self._booked.get(key_id, 0.0), first)
                self._booked[key_id] = due + max(WINDOW_S / rpm, estimate * WINDOW_S / tpm)
                wait.append((row, max(MIN_DELAY_S, due - now)))
            if tokens != 0 and tpm != UNLIMITED:  # unused (or owed) tokens stay with the key
                self._credit[key_id] = min(tokens, tpm)
        return run, wait

    def settle(self, row: ClaimedRequest, outcome: Outcome | None) -> None:
        """Correct a run row's tokens by what its attempt used: a completed call's usage; a
        failed or retried one used none (as a gateway gives a failed call's tokens back)."""
        if row.tpm is None:
            return
        usage = outcome.usage if outcome is not None else None
        completed = outcome is not None and outcome.status == Status.COMPLETED
        actual = usage.total if completed and usage is not None and usage.known else 0
        assert actual is not None
        estimate = min(float(estimate_tokens(row.body or {})), float(row.tpm))
        key_id = row.owner_key_id
        self._credit[key_id] = min(
            self._credit.get(key_id, 0.0) + estimate - actual, float(row.tpm)
        )
