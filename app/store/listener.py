"""One LISTEN connection per process, kept open across database restarts.

Notifications go to a callback; ``on_connected`` runs after each (re)connection, so a caller
can look for anything that happened while nobody was listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg

from app.store.dburl import DatabaseURL, connect_asyncpg

log = logging.getLogger("tiergate.listener")

OnNotify = Callable[[str, str], None]  # (channel, payload)
# A closed connection is not always reported at once: look this often. A server that froze,
# or whose machine vanished (a failover), leaves the socket open for hours: it must also
# answer a ping within PING_TIMEOUT_S.
HEALTH_CHECK_S = 5.0
PING_TIMEOUT_S = 5.0
# A notification takes a millisecond to arrive; this long means it never will.
PROBE_TIMEOUT_S = 5.0


class NotificationsLost(RuntimeError):
    """Notifications sent to the database never reach a LISTEN connection."""


async def require_notifications(url: DatabaseURL, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Show that ``url`` carries LISTEN/NOTIFY: LISTEN on one connection, NOTIFY from a
    second one, wait for the notification; raise ``NotificationsLost`` if it does not come.

    PgBouncer in transaction (or statement) pool mode gives the LISTEN's server connection
    back to its pool when the statement ends, so nothing ever arrives (measured with 1.18).
    psycopg sends statements without parameters by the simple protocol, so no prepared
    statement is involved (asyncpg's LISTEN is prepared). Connection errors propagate.

    The LISTEN goes to ``url.session()`` (the direct address behind a transaction-mode
    pooler), the NOTIFY through ``url`` itself, as tiergate's own NOTIFYs do.
    """
    channel = f"tiergate_probe_{secrets.token_hex(6)}"
    async with await _probe_connection(url.session()) as listener:
        await listener.execute(f"LISTEN {channel}")
        async with await _probe_connection(url) as notifier:
            await notifier.execute(f"NOTIFY {channel}")
        async for _ in listener.notifies(timeout=timeout_s, stop_after=1):
            return
    if url.transaction_pooled:
        raise NotificationsLost(
            f"a NOTIFY sent through DATABASE_URL did not reach a LISTEN connection on"
            f" DATABASE_DIRECT_URL within {timeout_s:g} s: both must reach the same database"
            " (DATABASE_DIRECT_URL is PostgreSQL itself or PgBouncer in session mode)"
        )
    raise NotificationsLost(
        f"a NOTIFY did not reach a LISTEN connection within {timeout_s:g} s: tiergate needs "
        "session connections (PostgreSQL directly, or PgBouncer with pool_mode = session); "
        "behind PgBouncer with pool_mode = transaction, set DATABASE_DIRECT_URL to a session "
        "address for LISTEN (see docs/scaling.md#pgbouncer)"
    )


async def _probe_connection(url: DatabaseURL) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(
        url.libpq(), autocommit=True, application_name="tiergate-probe"
    )


class Listener:
    """LISTENs on ``channels`` through one asyncpg connection, reconnecting with backoff."""

    def __init__(
        self,
        url: DatabaseURL,
        channels: list[str],
        on_notify: OnNotify,
        *,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        name: str = "tiergate-listen",
    ) -> None:
        self._url = url
        self._channels = channels
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._name = name
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.connections = 0  # how many times the connection was (re)established

    def start(self) -> None:
        """Connect and keep listening in the background."""
        self._task = asyncio.create_task(self._keep_listening(), name=self._name)

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    def _notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self._on_notify(channel, payload)

    async def _keep_listening(self) -> None:
        delay = 0.2
        while True:
            try:
                conn = await connect_asyncpg(
                    self._url.session(), server_settings={"application_name": self._name}
                )
                conn.add_termination_listener(lambda _c: self._lost.set())
                for channel in self._channels:
                    await conn.add_listener(channel, self._notify)
                self._conn, self._lost = conn, asyncio.Event()
                self.connected.set()
                self.connections += 1
                log.info("%s: listening on %s", self._name, ", ".join(self._channels))
                delay = 0.2
                if self._on_connected is not None:
                    await self._on_connected()
                while not self._lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._lost.wait(), HEALTH_CHECK_S)
                    if not self._lost.is_set() and not await _answers(conn):
                        self._lost.set()
                log.warning("%s: connection lost; reconnecting", self._name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection refused, database restarting, ...
                log.warning("%s: connection failed (%s); retrying in %.1fs", self._name, exc, delay)
            self.connected.clear()
            await self._close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:  # a server that does not answer: drop the socket
                conn.terminate()


async def _answers(conn: asyncpg.Connection) -> bool:
    """Whether the server behind ``conn`` still answers (a round trip per HEALTH_CHECK_S)."""
    if conn.is_closed():
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT_S)
    except Exception:
        return False
    return True
