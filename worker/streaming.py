"""A background Response created with ``stream=true``: the worker streams from the upstream
and stores the events as they come, in batches.

Events are renumbered after the last stored one and carry tiergate's Response (``id``,
``background``, ``service_tier``, ...) where they carry one. The upstream's
``response.created``/``queued``/``in_progress`` are replaced by one ``response.in_progress``
per attempt (the stream's ``created`` and ``queued`` were stored at acceptance); its terminal
event becomes the attempt's outcome, whose event is stored with the final status.

Storage is batched, not a write per token: a flush every ``FLUSH_S`` or every
``FLUSH_EVENTS`` events, whichever comes first, and the last batch together with the final
status. A crash loses at most the events since the last flush; the rescued attempt goes on
numbering after the last stored event and starts again with a fresh ``response.in_progress``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from typing import Any

from app.calls.outcome import renamed
from app.openai.objects import response_object
from app.openai.sse import event_data, events_end
from app.openai.stored_events import dumps, terminal_event
from app.store.events import EventStore
from app.store.outcomes import Outcome
from app.store.requests import ClaimedRequest, Finish, RequestRow
from app.upstream.client import (
    UpstreamClient,
    UpstreamError,
    UpstreamReply,
    error_from_status,
    iter_bytes,
    read_all,
    within,
)
from app.upstream.deployment import Deployment
from app.vocabulary import CallClass, Endpoint, ErrorCode, Status

log = logging.getLogger("tiergate.streaming")

FLUSH_S = 0.1
FLUSH_EVENTS = 64
# Upstream lifecycle events the stored stream has already (or replaces by its own).
SKIPPED = frozenset({"response.created", "response.queued", "response.in_progress"})


def wants_events(row: ClaimedRequest) -> bool:
    """Whether a claimed row is a background Response whose events are stored."""
    return row.stream and row.background and row.endpoint == Endpoint.RESPONSES


def _row(claimed: ClaimedRequest, status: str, **columns: Any) -> RequestRow:
    """A request row as ``response_object`` reads it, from a claimed row and new columns."""
    return RequestRow(
        id=claimed.id,
        owner_key_id=claimed.owner_key_id,
        endpoint=claimed.endpoint,
        model=claimed.model,
        service_tier=claimed.service_tier,
        status=status,
        body=claimed.body,
        created_at=claimed.created_at,
        background=True,
        stream=True,
        **columns,
    )


class EventWriter:
    """Numbers, buffers and stores the events of one attempt."""

    def __init__(
        self,
        store: EventStore,
        claimed: ClaimedRequest,
        first: int,
        *,
        flush_s: float = FLUSH_S,
        flush_events: int = FLUSH_EVENTS,
    ) -> None:
        self.store = store
        self.id = claimed.id
        self.attempt = claimed.attempts
        self.next_seq = first
        self.flush_s = flush_s
        self.flush_events = flush_events
        self._claimed = claimed
        self._buffer: list[tuple[int, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Task[None] | None = None
        self._due = False

    def begin(self) -> None:
        """The attempt's first event: ``response.in_progress`` with tiergate's Response."""
        started = response_object(_row(self._claimed, Status.IN_PROGRESS))
        self.add({"type": "response.in_progress", "response": started})

    def add(self, event: dict[str, Any]) -> None:
        """Number an event and buffer it; a flush starts when one is due."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self._buffer.append((seq, dumps({**event, "sequence_number": seq})))
        if len(self._buffer) >= self.flush_events:
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_s, self._kick)

    def _kick(self) -> None:
        """A flush is due (the timer fired, or the buffer is full)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = True
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._flush(), name=f"events-{self.id}")

    async def _flush(self) -> None:
        # One flush at a time, in order. What arrives during one waits for its own due time
        # (its timer, or a full buffer): a running flush does not turn into one per event.
        while self._due and self._buffer:
            self._due = False
            batch, self._buffer = self._buffer, []
            try:
                await self.store.append(self.id, self.attempt, batch)
            except Exception as exc:
                # Kept for the next flush or the final write (which then carries them).
                log.warning("response %s: events not stored yet (%s)", self.id, exc)
                self._buffer[:0] = batch
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.flush_s, self._kick)
                return

    async def _settle(self) -> list[tuple[int, str]]:
        """Wait for the flush under way; the events still buffered."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._drain)
        rest, self._buffer = self._buffer, []
        return rest

    async def flush(self) -> None:
        """Store everything buffered (before a retry is queued)."""
        rest = await self._settle()
        if rest:
            await self.store.append(self.id, self.attempt, rest)

    async def finish(self, outcome: Outcome) -> bool:
        """Store the outcome, the last events and the terminal event in one statement."""
        rest = await self._settle()
        final = _row(
            self._claimed,
            finished_at=dt.datetime.now(dt.UTC),
            **{k: v for k, v in outcome.params().items() if k != "deployment"},
        )
        seq = self.next_seq
        rest.append((seq, dumps(terminal_event(response_object(final), seq))))
        self.next_seq += 1
        return await self.store.finish(Finish(self.id, self.attempt, outcome), rest)

    def close(self) -> None:
        """Drop what is pending (the attempt was abandoned)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()


async def stream_call(
    upstream: UpstreamClient,
    deployment: Deployment,
    endpoint: str,
    body: dict[str, Any],
    writer: EventWriter,
    naming: tuple[str, str],
    *,
    tier: str | None = None,
    call: CallClass | None = None,
) -> UpstreamReply:
    """One streamed call: events stored as they come, naming the model as ``naming`` says
    (the upstream's name, the client's); the Response of the terminal event. ``tier``: the
    provider's service tier (``flex``: within its flex timeout); ``call``: the kind of call,
    for the engine's priority.

    A ``response.failed`` or an ``error`` event is a final failure; a stream that ends or
    breaks before its terminal event is retryable (``upstream_stream_broken``).
    """
    timeout_s = deployment.config.flex.timeout_s if tier else deployment.model.timeout_s
    async with (
        within(timeout_s),
        upstream.open(
            deployment,
            endpoint,
            {**body, "stream": True},
            timeout_s=timeout_s,
            tier=tier,
            call=call,
        ) as response,
    ):
        if response.status_code >= 400:
            content = await read_all(response)
            raise error_from_status(response.status_code, response.headers, content)
        writer.begin()
        pending = b""
        async for chunk in iter_bytes(response):
            data = pending + (chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk)
            cut = events_end(data)
            pending = data[cut:]
            for block in renamed(data[:cut], *naming).split(b"\n\n"):
                final = _take(block, writer)
                if final is not None:
                    return UpstreamReply(200, final, "")
    raise UpstreamError(
        ErrorCode.UPSTREAM_STREAM_BROKEN, "The upstream stream ended before its final event."
    )


def _take(block: bytes, writer: EventWriter) -> dict[str, Any] | None:
    """Store one upstream event; the final Response if it was the terminal one."""
    payload = event_data(block)
    if not payload or payload == b"[DONE]":
        return None
    try:
        event = json.loads(payload)
    except ValueError:
        raise UpstreamError(
            ErrorCode.UPSTREAM_BAD_RESPONSE, "upstream sent an invalid event"
        ) from None
    kind = event.get("type") if isinstance(event, dict) else None
    if not isinstance(kind, str) or kind in SKIPPED:
        return None
    if kind in ("response.completed", "response.incomplete"):
        response = event.get("response")
        if not isinstance(response, dict):
            raise UpstreamError(
                ErrorCode.UPSTREAM_BAD_RESPONSE, f"upstream sent {kind} without a response"
            )
        return {**response, "id": writer.id}
    if kind in ("response.failed", "error"):
        # Final: the upstream said so (retrying would stream the same failure again).
        if kind == "error":
            error = {"code": event.get("code"), "message": event.get("message")}
        else:
            error = (event.get("response") or {}).get("error") or {}
        raise UpstreamError(
            error.get("code") or ErrorCode.UPSTREAM_STREAM_BROKEN,
            error.get("message") or "The upstream's response failed.",
            final=True,
        )
    event.pop("sequence_number", None)
    writer.add(event)
    return None
