"""The mock provider's magic controls: what a request asks the mock to do, and the plan
it gets on arrival (a delay, then an error, a drop or an answer). See ``app/mock/server.py``
for the list of controls."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

BEHAVIOR_HEADER = "x-mock-behavior"
INPUT_PREFIX = "mock:"
_CONTROL_KEYS = frozenset(
    {
        "status", "retry_after", "sleep_ms", "trickle_ms", "fail_times", "key", "drop", "hold",
        "error_format", "error_code", "linger", "usage", "cached", "reasoning",
        # Batch jobs (read from the header of a batch create call; see app/mock/batch_api.py):
        "turnaround_ms", "job_fail", "job_expire", "expire_after", "lose", "garbage",
        "drop_lines", "extra_lines", "jobs", "fail_creates",
    }
)  # fmt: skip
_FLAGS = frozenset({"drop", "usage", "job_fail", "job_expire", "lose", "garbage"})
_COUNTS = frozenset(
    {"cached", "reasoning", "expire_after", "drop_lines", "extra_lines", "jobs", "fail_creates"}
)
# How an error answer is shaped: OpenAI's own, or as other servers answer (see payloads.py).
ERROR_FORMATS = ("openai", "detail", "text", "html")


class BadRequestError(Exception):
    """A client error that becomes a 400 with an OpenAI error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Controls:
    """Per-request magic controls."""

    status: int | None = None
    retry_after: str | None = None
    sleep_ms: float = 0.0
    trickle_ms: float = 0.0
    fail_times: int | None = None
    key: str | None = None
    drop: bool = False
    hold: str | None = None
    linger: str | None = None
    error_format: str = "openai"
    error_code: str | None = None  # the code of an OpenAI-shaped error answer
    usage: bool = True  # usage=0: the answer reports no usage (as llama.cpp's server)
    cached: int = 0  # cached=N: N of the input tokens were cached (at most all of them)
    reasoning: int = 0  # reasoning=N: N of the output tokens were reasoning (at most all)
    # Batch jobs (app/mock/batch_api.py): how long a job takes, and how it ends.
    turnaround_ms: float | None = None  # None: the default turnaround
    job_fail: bool = False  # the job ends failed, without output
    job_expire: bool = False  # the job ends expired after its turnaround
    expire_after: int = 0  # with job_expire: how many lines completed first
    lose: bool = False  # the job vanishes after creation (404, not listed)
    garbage: bool = False  # the output file is not JSON lines
    drop_lines: int = 0  # the output file lacks its last K lines
    extra_lines: int = 0  # K output lines with unknown custom_ids are added
    jobs: int = 0  # with key=NAME: the job controls above hold for the first K jobs only
    fail_creates: int = 0  # with key=NAME: the first K batch creates answer 500


def _control_pairs(spec: str) -> Iterator[tuple[str, str]]:
    for token in re.split(r"[,\s]+", spec.strip()):
        if "=" in token:
            key, _, value = token.partition("=")
            yield key.strip().lower(), value.strip()


def _int_value(key: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequestError(f"mock control {key!r} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise BadRequestError(f"mock control {key!r} must be in [{low}, {high}], got {number}")
    return number


def _apply_control(fields: dict[str, Any], key: str, value: str) -> None:
    if key not in _CONTROL_KEYS:
        raise BadRequestError(f"unknown mock control {key!r}")
    if key == "status":
        fields["status"] = _int_value(key, value, 400, 599)
    elif key in ("sleep_ms", "trickle_ms", "turnaround_ms"):
        fields[key] = float(_int_value(key, value, 0, 3_600_000))
    elif key == "fail_times":
        fields["fail_times"] = _int_value(key, value, 0, 1_000_000)
    elif key in _FLAGS:
        fields[key] = _int_value(key, value, 0, 1) == 1
    elif key in _COUNTS:
        fields[key] = _int_value(key, value, 0, 1_000_000)
    elif key == "error_format":
        if value not in ERROR_FORMATS:
            raise BadRequestError(f"mock control 'error_format' must be one of {ERROR_FORMATS}")
        fields[key] = value
    else:  # retry_after, key, hold, linger, error_code: free-form strings
        fields[key] = value


def parse_controls(header: str | None, text: str) -> Controls:
    """Merge controls from the input text (``mock:...``) and the header (header wins)."""
    fields: dict[str, Any] = {}
    specs = [text[len(INPUT_PREFIX) :]] if text.startswith(INPUT_PREFIX) else []
    specs += [header] if header else []
    for spec in specs:
        for key, value in _control_pairs(spec):
            _apply_control(fields, key, value)
    return Controls(**fields)


@dataclass(frozen=True)
class Plan:
    """What one request gets, decided on arrival: a delay, then an error, a drop or an answer."""

    sleep_ms: float
    status: int | None
    drop: bool
    retry_after: str | None = None
    message: str = ""
    trickle_ms: float = 0.0
    error_format: str = "openai"
    error_code: str | None = None


def plan_for(state: Any, controls: Controls) -> Plan:
    """Apply ``fail_times`` (counted per key on arrival), the controls and ``fail_rate``."""
    if controls.fail_times is not None:
        key = controls.key or "default"
        seen = state.fail_counts.get(key, 0) + 1
        state.fail_counts[key] = seen
        if seen > controls.fail_times:
            return Plan(sleep_ms=0.0, status=None, drop=False)
        defaulted = 500 if not (controls.sleep_ms or controls.trickle_ms or controls.drop) else None
        return Plan(
            sleep_ms=controls.sleep_ms,
            status=None if controls.drop else controls.status or defaulted,
            drop=controls.drop,
            retry_after=controls.retry_after,
            message=f"mock failure {seen}/{controls.fail_times} for key {key!r}",
            trickle_ms=controls.trickle_ms,
            error_format=controls.error_format,
        )
    if controls.status is not None:
        status = controls.status
        return Plan(
            controls.sleep_ms,
            status,
            False,
            controls.retry_after,
            f"mock status {status}",
            error_format=controls.error_format,
            error_code=controls.error_code,
        )
    if state.config.fail_rate > 0 and state.rng.random() < state.config.fail_rate:
        message = "The server had an error while processing your request. Sorry about that!"
        return Plan(controls.sleep_ms, 500, False, None, message)
    return Plan(
        sleep_ms=controls.sleep_ms,
        status=None,
        drop=controls.drop,
        trickle_ms=controls.trickle_ms,
    )
