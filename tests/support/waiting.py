"""Polling with a deadline: for conditions that no event announces to the test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 60.0
POLL_S = 0.05


def wait_until(predicate: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT_S) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; fail with
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def seconds_until(predicate: Callable[[], object], what: str, timeout: float) -> float:
    """How long ``predicate`` took to become true (fails after ``timeout``)."""
    started = time.monotonic()
    wait_until(predicate, what, timeout)
    return time.monotonic() - started
