"""What an executor is given and what it answers.

An executor takes one claimed row at a time (:class:`Work`) and answers with how the attempt
ended (an ``Attempt``: an outcome, or a retry), or with ``None``: it took the row over and will
finish it itself, later and possibly from another process, through the store (a provider's
Batch API job gathers the rows handed to it concurrently, and its poller finishes them). Rows
are handed over concurrently, so an executor that sends many rows at once gathers them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from app.calls.policy import EXPIRED, Attempt
from app.settings import ModelConfig
from app.store.outcomes import Outcome
from app.store.requests import ClaimedRequest
from app.vocabulary import CallClass, ExecutorKind, PriceTier
from worker.streaming import EventWriter


@dataclass(frozen=True)
class Work:
    """One attempt at a claimed row (a flex or background request, or a batch line)."""

    id: str
    attempt: int
    model: str  # the model's name (the runner looks its config up: it may have gone)
    endpoint: str
    body: dict[str, Any]
    expires_at: dt.datetime
    tier: str = PriceTier.FLEX  # the pricing tier
    key: str = ""  # the key's name: fair shares and metrics
    owner: str = ""  # the key's id
    pin: str | None = None  # a deployment the client asked for
    last: str | None = None  # the deployment of the previous attempt (the retry avoids it)
    expired: Outcome = EXPIRED  # the outcome when the window passed
    stop: asyncio.Event | None = None  # set: end as ``stopped`` instead (a batch cancel)
    stopped: Outcome | None = None
    events: EventWriter | None = None  # a streamed attempt stores its events as they come
    path: ExecutorKind = ExecutorKind.DIRECT  # how it runs (the runner chooses: paths.py)
    call: CallClass = CallClass.FLEX  # the kind of call, for an engine's priority


def work_of(
    row: ClaimedRequest,
    *,
    tier: str | None = None,
    expired: Outcome = EXPIRED,
    stop: asyncio.Event | None = None,
    stopped: Outcome | None = None,
    events: EventWriter | None = None,
) -> Work:
    """The work of a claimed row: its key, window, pin and last deployment, priced at
    ``tier`` (the row's own tier by default; a batch line's is ``batch``)."""
    return Work(
        id=row.id,
        attempt=row.attempts,
        model=row.model,
        endpoint=row.endpoint,
        body=row.body,
        expires_at=row.expires_at,
        tier=tier or row.service_tier,
        key=row.key_name or "",
        owner=row.owner_key_id,
        pin=row.pinned_deployment,
        last=row.deployment,
        expired=expired,
        stop=stop,
        stopped=stopped,
        events=events,
        call=call_class(row, tier),
    )


def call_class(row: ClaimedRequest, tier: str | None) -> CallClass:
    """The kind of call a claimed row makes: a Batch API line, a background request or a
    flex one."""
    if tier == PriceTier.BATCH:
        return CallClass.BATCH
    return CallClass.BACKGROUND if row.background else CallClass.FLEX


class Executor(Protocol):
    """Runs deferred work on one kind of deployment."""

    async def execute(self, model: ModelConfig, work: Work) -> Attempt | None:
        """How ``work`` (on ``model``) ended, or None when the executor took it over."""
        ...
