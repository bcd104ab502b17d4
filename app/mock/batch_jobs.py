"""The mock provider's batch jobs, shared by its OpenAI and Anthropic Batch APIs: the
in-memory store, a job's life by the wall clock, and the gate every batch API call passes.

A job lives in a background asyncio task: ``validating`` for ``validate_s``, then its lines
start one after another, evenly spaced over the rest of the turnaround (the first at once),
each answered in process by the mock's own reply logic; the job ends when its turnaround has
passed and its lines are answered. A cancel stops starting lines; lines in flight finish
first. The shapes of the objects live in ``batch_api.py`` (OpenAI) and
``message_batches.py`` (Anthropic); the controls are listed in ``batch_api.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app.mock.controls import BEHAVIOR_HEADER, BadRequestError, Controls, parse_controls, plan_for

DEFAULT_TURNAROUND_S = 0.2
TICK_S = 0.02  # lines due this close together start at the same wake-up
MAX_VALIDATE_S = 0.1  # validating lasts a fifth of the turnaround, at most this

# Phases while a job runs, and how it ends (OpenAI's words; Anthropic's are mapped).
VALIDATING, IN_PROGRESS, CANCELLING, FINALIZING = (
    "validating", "in_progress", "cancelling", "finalizing"
)  # fmt: skip
COMPLETED, FAILED, EXPIRED, CANCELLED = "completed", "failed", "expired", "cancelled"


@dataclass(frozen=True)
class LineReply:
    """What one line's call answered: its HTTP status and body (JSON, or the text of an
    answer that is not JSON)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# Answers a line in process: (the path its call is counted under, its URL, its raw body).
LineAnswer = Callable[[str, str, bytes], Awaitable[LineReply]]


@dataclass(frozen=True)
class Line:
    """One request of a job."""

    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass
class StoredFile:
    """An uploaded or produced file (OpenAI Files API)."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    expires_at: int | None = None


@dataclass
class Job:
    """A batch job of either API and its progress."""

    id: str
    lines: list[Line]
    controls: Controls
    run_line: Callable[[Line], Awaitable[LineReply]]
    validate_s: float
    created: float = field(default_factory=time.time)
    status: str = VALIDATING
    errors: list[dict[str, Any]] = field(default_factory=list)  # job-level: it fails
    replies: dict[int, LineReply] = field(default_factory=dict)  # by line index
    in_progress_at: float | None = None
    cancelling_at: float | None = None
    finalizing_at: float | None = None
    ended_at: float | None = None
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # OpenAI's fields (unused by Message Batches).
    endpoint: str = ""
    input_file_id: str = ""
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    # Anthropic's results file, once ended.
    results: bytes | None = None

    @property
    def turnaround_s(self) -> float:
        ms = self.controls.turnaround_ms
        return DEFAULT_TURNAROUND_S if ms is None else ms / 1000

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def counts(self) -> tuple[int, int]:
        """(lines answered 2xx, lines answered an error)."""
        ok = sum(1 for reply in self.replies.values() if reply.ok)
        return ok, len(self.replies) - ok


@dataclass
class BatchStore:
    """Everything the batch APIs keep (``POST /_mock/reset`` clears it)."""

    answer: LineAnswer
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, Job] = field(default_factory=dict)  # OpenAI, in creation order
    message_batches: dict[str, Job] = field(default_factory=dict)  # Anthropic
    jobs_by_key: dict[str, int] = field(default_factory=dict)  # creates per key=NAME
    creates_by_key: dict[str, int] = field(default_factory=dict)  # create calls per key=NAME

    def clear(self) -> None:
        for job in [*self.batches.values(), *self.message_batches.values()]:
            if job.task is not None:
                job.task.cancel()
        self.files.clear()
        self.batches.clear()
        self.message_batches.clear()
        self.jobs_by_key.clear()
        self.creates_by_key.clear()

    def refuses_create(self, controls: Controls) -> bool:
        """Whether this create call fails (``fail_creates=K,key=NAME``: the first K do)."""
        if not controls.fail_creates or controls.key is None:
            return False
        seen = self.creates_by_key[controls.key] = self.creates_by_key.get(controls.key, 0) + 1
        return seen <= controls.fail_creates

    def job_controls(self, controls: Controls) -> Controls:
        """The controls of a job being created: with ``jobs=K,key=NAME``, the job controls
        (``job_fail``, ``job_expire``, ``lose``, ``garbage``, ``drop_lines``,
        ``extra_lines``) hold for the first K jobs created with that key only."""
        if not controls.jobs or controls.key is None:
            return controls
        seen = self.jobs_by_key[controls.key] = self.jobs_by_key.get(controls.key, 0) + 1
        if seen <= controls.jobs:
            return controls
        return dataclasses.replace(
            controls,
            job_fail=False,
            job_expire=False,
            lose=False,
            garbage=False,
            drop_lines=0,
            extra_lines=0,
        )


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def store_of(request: Request) -> BatchStore:
    store: BatchStore = request.app.state.batch_store
    return store


def validate_s_for(controls: Controls) -> float:
    ms = controls.turnaround_ms
    turnaround = DEFAULT_TURNAROUND_S if ms is None else ms / 1000
    return min(turnaround / 5, MAX_VALIDATE_S)


# --- a job's life ---

OnEnd = Callable[[Job, str], None]  # (the job, how it ends): writes its results


def start(job: Job, on_end: OnEnd) -> None:
    """Run ``job`` in the background; ``on_end`` writes its results before it ends."""
    job.task = asyncio.get_running_loop().create_task(_run(job, on_end))


def cancel(job: Job) -> None:
    """Ask a running job to stop starting lines (a no-op once it ends or is cancelling)."""
    if job.ended or job.status == CANCELLING:
        return
    job.status = CANCELLING
    job.cancelling_at = time.time()
    job.cancel_requested.set()


async def _until(job: Job, at: float) -> bool:
    """Wait until the wall clock reaches ``at`` or a cancel comes; True if cancelled."""
    if job.cancel_requested.is_set():
        return True
    delay = at - time.time()
    if delay <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(job.cancel_requested.wait(), delay)
    return job.cancel_requested.is_set()


async def _run(job: Job, on_end: OnEnd) -> None:
    _end(job, await _outcome(job), on_end)


async def _outcome(job: Job) -> str:
    """Live the job's phases; how it ends."""
    end_at = job.created + job.turnaround_s
    # A job with errors fails at the end of validation (job_fail: after its turnaround).
    if job.errors:
        fail_at = end_at if job.controls.job_fail else job.created + job.validate_s
        return CANCELLED if await _until(job, fail_at) else FAILED
    if await _until(job, job.created + job.validate_s):
        return CANCELLED
    job.status = IN_PROGRESS
    job.in_progress_at = time.time()
    if await _run_lines(job, end_at) or await _until(job, end_at):
        return CANCELLED
    return EXPIRED if job.controls.job_expire else COMPLETED


async def _run_lines(job: Job, end_at: float) -> bool:
    """Start the lines to run, spaced over the turnaround; True if a cancel stopped it."""
    assert job.in_progress_at is not None
    total = len(job.lines)
    count = min(job.controls.expire_after, total) if job.controls.job_expire else total
    gap = max(0.0, end_at - job.in_progress_at) / max(total, 1)
    running: list[asyncio.Task[None]] = []
    cancelled = False
    for index in range(count):
        due = job.in_progress_at + index * gap
        # lines due within a tick start together: one timer per tick, not one per line
        waits = due > time.time()
        if job.cancel_requested.is_set() or (
            waits and await _until(job, max(due, time.time() + TICK_S))
        ):
            cancelled = True
            break
        running.append(asyncio.create_task(_answer(job, index)))
    await asyncio.gather(*running)
    return cancelled


async def _answer(job: Job, index: int) -> None:
    try:
        job.replies[index] = await job.run_line(job.lines[index])
    except Exception as exc:  # a mock bug must not hang the job: the line answers 500
        message = f"mock batch line failed: {exc!r}"
        job.replies[index] = LineReply(500, {"error": {"message": message, "type": "server_error"}})


def _end(job: Job, status: str, on_end: OnEnd) -> None:
    now = time.time()
    if status == COMPLETED:
        job.status = FINALIZING
        job.finalizing_at = now
    on_end(job, status)  # results are written before the job is seen to end
    job.status = status
    job.ended_at = now


# --- output lines as the controls shape them ---


def shaped_output(lines: list[bytes], controls: Controls, extra: Callable[[int], bytes]) -> bytes:
    """The output file's content: the last ``drop_lines`` removed, ``extra_lines`` lines made
    by ``extra`` added, or not JSON lines at all (``garbage``)."""
    if controls.garbage:
        return b"<html><body>mock garbage: this is not JSON lines</body></html>\n{{{\n"
    kept = lines[: max(0, len(lines) - controls.drop_lines)]
    kept += [extra(i) for i in range(controls.extra_lines)]
    return b"".join(line + b"\n" for line in kept)


# --- the gate every batch API call passes ---

ErrorReply = Callable[[int, str, str | None], Response]  # (status, message, retry_after)


def count_key(request: Request) -> str:
    """Where ``/_mock/stats`` counts a call: its path for POST (as the other API calls),
    ``"METHOD path"`` for the others (``GET /v1/files`` is a list, ``POST /v1/files`` an
    upload)."""
    path = request.url.path
    return path if request.method == "POST" else f"{request.method} {path}"


async def gate(request: Request, error: ErrorReply) -> tuple[Controls, Response | None]:
    """Count the call, read its ``x-mock-behavior`` controls, apply them (``status``,
    ``fail_times``, ``sleep_ms``, ``key``, ``retry_after``), the outage and the latency:
    the controls, and the error to answer instead, if any."""
    state = request.app.state
    path = count_key(request)
    state.counts[path] = state.counts.get(path, 0) + 1
    try:
        controls = parse_controls(request.headers.get(BEHAVIOR_HEADER), "")
    except BadRequestError as exc:
        return Controls(), error(400, exc.message, None)
    plan = plan_for(state, controls)
    status, message = plan.status, plan.message
    if state.outage is not None:
        status, message = state.outage, "The mock provider is in an outage."
    if controls.key is not None:
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        record = {"at": time.time(), "path": path, "status": status or 200, "drop": False}
        record |= {"sleep_ms": plan.sleep_ms, "trickle_ms": 0.0, "headers": headers, "body": None}
        state.attempts.setdefault(controls.key, []).append(record)
    await asyncio.sleep((state.config.latency_ms + plan.sleep_ms) / 1000)
    if status is not None:
        return controls, error(status, message or f"mock status {status}", plan.retry_after)
    return controls, None


def page(
    items: list[Any], after: str | None, before: str | None, limit: int
) -> tuple[list[Any], bool]:
    """A page of ``items`` (newest first, each with an ``id``) after or before a cursor id;
    and whether more remain in that direction."""
    ids = [item.id for item in items]
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(items)
        chosen = items[start : start + limit]
        return chosen, start + limit < len(items)
    if before is not None:
        end = ids.index(before) if before in ids else 0
        begin = max(0, end - limit)
        return items[begin:end], begin > 0
    return items[:limit], limit < len(items)
