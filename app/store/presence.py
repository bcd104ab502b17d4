"""Process presence: each gateway and worker process keeps a row of ``processes`` fresh.

A realtime row names its gateway and a claimed deferred request its worker; when that process
falls silent, the sweep knows nobody will finish the row (``app/store/sweeps.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ids import new_id
from app.vocabulary import ProcessKind

log = logging.getLogger("tiergate.presence")

REGISTER = text(
    "INSERT INTO processes (id, kind, hostname, pid) VALUES (:id, :kind, :hostname, :pid)"
    " ON CONFLICT (id) DO UPDATE SET last_seen_at = now()"
)
UNREGISTER = text("DELETE FROM processes WHERE id = :id")
# Forget processes long gone (their orphaned rows are reaped by then).
PRUNE = text("DELETE FROM processes WHERE last_seen_at < now() - interval '1 day'")


class Presence:
    """Registers this process and refreshes its ``last_seen_at`` every ``every_s``."""

    def __init__(self, engine: AsyncEngine, *, kind: ProcessKind, every_s: float) -> None:
        self.engine = engine
        self.kind = kind
        self.every_s = every_s
        self.id = new_id("gw_" if kind == ProcessKind.GATEWAY else "wk_")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register now (so rows may name this process), then beat in the background."""
        await self._register()
        self._task = asyncio.create_task(self._beat(), name=f"{self.kind}-heartbeat")

    async def stop(self) -> None:
        """Stop beating and unregister (a process that vanishes is noticed by its silence)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._execute(UNREGISTER)

    async def _register(self) -> None:
        await self._execute(
            REGISTER, kind=str(self.kind), hostname=socket.gethostname(), pid=os.getpid()
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self._register()
                await self._execute(PRUNE)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database restarting: try again next beat
                log.warning("%s heartbeat failed: %s", self.kind, exc)

    async def _execute(self, statement: TextClause, **params: object) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(statement, {"id": self.id, **params})
