"""The per-process LISTEN hub that wakes blocking flex clients.

One asyncpg connection LISTENs on ``tiergate_done`` (request finished),
``tiergate_events`` (a streamed background Response stored events) and ``tiergate_keys``
(key revoked) and fans notifications out to asyncio futures. Thousands of
waiting clients cost one connection and, as a safety net against lost notifications (the
connection dropped, the database restarted), one query every ``recheck_s`` for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from app.store.dburl import DatabaseURL
from app.store.listener import Listener
from app.vocabulary import Channel

log = logging.getLogger("tiergate.waiters")

FinalAmong = Callable[[list[str]], Awaitable[list[str]]]


class WaiterHub:
    """Fan out ``NOTIFY tiergate_done, '<id>'`` to everyone waiting on that id."""

    def __init__(
        self,
        url: DatabaseURL,
        *,
        final_among: FinalAmong,
        on_key_revoked: Callable[[str], None],
        recheck_s: float = 5.0,
    ) -> None:
        self._final_among = final_among
        self._on_key_revoked = on_key_revoked
        self._recheck_s = recheck_s
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # Readers of stored event streams: woken by every flush, and when the request ends.
        self._followers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        # Anything that finished while nobody listened is found by the re-check on connect.
        self._listener = Listener(
            url,
            [Channel.DONE, Channel.KEYS, Channel.EVENTS],
            self._on_notify,
            on_connected=self._on_reconnect,
            name="tiergate-listen",
        )

    @property
    def connected(self) -> asyncio.Event:
        """Set while the LISTEN connection is up."""
        return self._listener.connected

    @property
    def connections(self) -> int:
        """How many times the LISTEN connection was (re)established."""
        return self._listener.connections

    @property
    def waiting(self) -> int:
        """How many clients are waiting."""
        return sum(len(futures) for futures in self._waiters.values())

    async def start(self) -> None:
        """Start listening, and the safety-net re-check."""
        self._listener.start()
        self._task = asyncio.create_task(self._recheck_loop(), name="waiters-recheck")

    async def stop(self) -> None:
        """Stop listening (waiting clients are not woken)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listener.stop()

    @contextlib.asynccontextmanager
    async def waiter(
        self, request_id: str
    ) -> AsyncIterator[Callable[[float | None], Awaitable[bool]]]:
        """Register interest in a request *before* it can finish; yields ``wait(timeout)``.

        Use it around the insert of a new request: its completion cannot be missed, and no
        query is needed to look at the row first.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, set()).add(future)

        async def wait(timeout: float | None) -> bool:
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout)
                return True
            except TimeoutError:
                return False

        try:
            yield wait
        finally:
            futures = self._waiters.get(request_id)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self._waiters[request_id]

    async def wait(self, request_id: str, timeout: float | None) -> bool:
        """Wait for a request that may already be final; False on timeout."""
        async with self.waiter(request_id) as wait:
            if await self._final_among([request_id]):
                return True
            return await wait(timeout)

    @contextlib.asynccontextmanager
    async def follower(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``request_id`` stores events or ends (and after the LISTEN
        connection came back); the follower clears it before each read."""
        woken = asyncio.Event()
        self._followers.setdefault(request_id, set()).add(woken)
        try:
            yield woken
        finally:
            followers = self._followers.get(request_id)
            if followers is not None:
                followers.discard(woken)
                if not followers:
                    del self._followers[request_id]

    def _wake(self, request_id: str) -> None:
        for future in self._waiters.get(request_id, ()):
            if not future.done():
                future.set_result(None)
        self._wake_followers(request_id)

    def _wake_followers(self, request_id: str) -> None:
        for woken in self._followers.get(request_id, ()):
            woken.set()

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == Channel.DONE:
            self._wake(payload)
        elif channel == Channel.EVENTS:
            self._wake_followers(payload)
        elif channel == Channel.KEYS:
            self._on_key_revoked(payload)

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            try:
                await self._recheck()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("waiter re-check failed: %s", exc)

    async def _on_reconnect(self) -> None:
        # Followers read again: events stored while nobody listened are found.
        for request_id in list(self._followers):
            self._wake_followers(request_id)
        await self._recheck()

    async def _recheck(self) -> None:
        ids = list(self._waiters)
        if ids:
            for request_id in await self._final_among(ids):
                self._wake(request_id)
