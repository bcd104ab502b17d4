"""The per-process LISTEN hub that wakes blocking flex clients.

One asyncpg connection LISTENs on ``tiergate_done`` (request finished) and
``tiergate_keys`` (key revoked) and fans notifications out to asyncio futures. Thousands of
waiting clients cost one connection and, as a safety net against lost notifications (the
connection dropped, the database restarted), one query every ``recheck_s`` for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from app.store.dburl import DatabaseURL
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
        self._url = url
        self._final_among = final_among
        self._on_key_revoked = on_key_revoked
        self._recheck_s = recheck_s
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.connections = 0  # how many times the LISTEN connection was (re)established

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._waiters.values())

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep_listening(), name="waiters-listen"),
            asyncio.create_task(self._recheck_loop(), name="waiters-recheck"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close()

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

    def _wake(self, request_id: str) -> None:
        for future in self._waiters.get(request_id, ()):
            if not future.done():
                future.set_result(None)

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == Channel.DONE:
            self._wake(payload)
        elif channel == Channel.KEYS:
            self._on_key_revoked(payload)

    async def _keep_listening(self) -> None:
        delay = 0.2
        while True:
            try:
                conn = await asyncpg.connect(
                    **self._url.asyncpg_kwargs(),
                    server_settings={"application_name": "tiergate-listen"},
                )
                conn.add_termination_listener(lambda _c: self._lost.set())
                await conn.add_listener(Channel.DONE, self._on_notify)
                await conn.add_listener(Channel.KEYS, self._on_notify)
                self._conn, self._lost = conn, asyncio.Event()
                self.connected.set()
                self.connections += 1
                log.info("listening for request completions")
                delay = 0.2
                # Anything that finished while we were not listening: check now.
                await self._recheck()
                await self._lost.wait()
                log.warning("listen connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection refused, database restarting, ...
                log.warning("listen connection failed (%s); retrying in %.1fs", exc, delay)
            self.connected.clear()
            await self._close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            if self._conn is not None and self._conn.is_closed():
                self._lost.set()
            try:
                await self._recheck()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("waiter re-check failed: %s", exc)

    async def _recheck(self) -> None:
        ids = list(self._waiters)
        if ids:
            for request_id in await self._final_among(ids):
                self._wake(request_id)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
