"""Gateway presence: each gateway process keeps a row fresh, so workers can tell which
realtime calls were orphaned by a gateway that died (see ``REAP_REALTIME``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ids import new_id

log = logging.getLogger("tiergate.gateways")

REGISTER = text(
    "INSERT INTO gateways (id, hostname, pid) VALUES (:id, :hostname, :pid)"
    " ON CONFLICT (id) DO UPDATE SET last_seen_at = now()"
)
UNREGISTER = text("DELETE FROM gateways WHERE id = :id")
# Forget gateways long gone (their orphaned rows are reaped by then).
PRUNE = text("DELETE FROM gateways WHERE last_seen_at < now() - interval '1 day'")


class GatewayPresence:
    """Registers this process and refreshes its ``last_seen_at`` every ``every_s``."""

    def __init__(self, engine: AsyncEngine, *, every_s: float) -> None:
        self.engine = engine
        self.every_s = every_s
        self.id = new_id("gw_")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._execute(REGISTER, hostname=socket.gethostname(), pid=os.getpid())
        self._task = asyncio.create_task(self._beat(), name="gateway-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._execute(UNREGISTER)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self._execute(REGISTER, hostname=socket.gethostname(), pid=os.getpid())
                await self._execute(PRUNE)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database restarting: try again next beat
                log.warning("gateway heartbeat failed: %s", exc)

    async def _execute(self, statement: TextClause, **params: object) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(statement, {"id": self.id, **params})
