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
from collections.abc import Callable
from typing import Any

from sqlalchemy import Float, RowMapping, TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ids import new_id
from app.vocabulary import ProcessKind

log = logging.getLogger("tiergate.presence")

REGISTER = text(
    "INSERT INTO processes (id, kind, hostname, pid, deployments)"
    " VALUES (:id, :kind, :hostname, :pid, :deployments)"
    " ON CONFLICT (id) DO UPDATE SET last_seen_at = now(), deployments = EXCLUDED.deployments"
).bindparams(bindparam("deployments", type_=JSONB(none_as_null=True)))
# What the other live processes last saw of the deployments.
PEERS = (
    text(
        "SELECT deployments FROM processes"
        " WHERE id <> :id AND deployments IS NOT NULL"
        " AND last_seen_at > now() - make_interval(secs => :fresh_s)"
    )
    .bindparams(bindparam("fresh_s", type_=Float))
    .columns(deployments=JSONB)
)
# Every live process's view, for ``tiergate deployments``.
VIEWS = text(
    "SELECT id, kind, hostname, pid, last_seen_at, deployments FROM processes"
    " WHERE last_seen_at > now() - make_interval(secs => :fresh_s) ORDER BY kind, started_at"
).bindparams(bindparam("fresh_s", type_=Float))

Snapshot = list[dict[str, Any]]
UNREGISTER = text("DELETE FROM processes WHERE id = :id")
# Forget processes long gone (their orphaned rows are reaped by then).
PRUNE = text("DELETE FROM processes WHERE last_seen_at < now() - interval '1 day'")


class Presence:
    """Registers this process and refreshes its ``last_seen_at`` every ``every_s``.

    With ``report`` and ``learn``, each beat also publishes this process's view of the
    deployments and hands the other live processes' views to ``learn``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        kind: ProcessKind,
        every_s: float,
        report: Callable[[], Snapshot] | None = None,
        learn: Callable[[list[Snapshot]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.kind = kind
        self.every_s = every_s
        self.report = report
        self.learn = learn
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
            REGISTER,
            kind=str(self.kind),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            deployments=self.report() if self.report else None,
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self._register()
                await self._execute(PRUNE)
                if self.learn is not None:
                    self.learn(await self._peers())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database restarting: try again next beat
                log.warning("%s heartbeat failed: %s", self.kind, exc)

    async def _peers(self) -> list[Snapshot]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(PEERS, {"id": self.id, "fresh_s": 3 * self.every_s})
            return [row.deployments for row in rows]

    async def _execute(self, statement: TextClause, **params: object) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(statement, {"id": self.id, **params})


async def process_views(engine: AsyncEngine, fresh_s: float) -> list[RowMapping]:
    """Every process seen in the last ``fresh_s`` seconds, with its view of the deployments."""
    async with engine.connect() as conn:
        return list((await conn.execute(VIEWS, {"fresh_s": fresh_s})).mappings())
