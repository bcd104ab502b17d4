"""Measuring processes for benchmarks: their memory and the CPU they used, PostgreSQL's too;
and the blocking flex round trip."""

from __future__ import annotations

import contextlib
import os
import time

import httpx
import psutil
import psycopg


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (0 once it is gone)."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of a process so far (0 once it is gone); ``children`` adds its
    exited children's (a PostgreSQL backend that closed) and its live children's."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system
        if children:
            total += times.children_user + times.children_system
            total += sum(cpu_seconds(child.pid) for child in process.children())
        return total
    except psutil.Error:
        return 0.0


class CpuMeter:
    """CPU seconds used so far by each part of the run, PostgreSQL included when it runs here."""

    def __init__(self, db: str, parts: dict[str, list[int]]) -> None:
        self.parts = {**parts, "load generator": [os.getpid()]}
        self.postmaster: int | None = None
        with psycopg.connect(db, autocommit=True) as conn, contextlib.suppress(psutil.Error):
            found = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert found is not None
            parent = psutil.Process(found[0]).parent()  # while the backend lives
            if parent is not None and "postgres" in parent.name():
                self.postmaster = parent.pid

    def read(self) -> dict[str, float]:
        """CPU seconds so far, by part (``postgres`` when the server runs on this machine)."""
        used = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.parts.items()}
        if self.postmaster is not None:
            used["postgres"] = cpu_seconds(self.postmaster, children=True)
        return used


async def flex_latency(
    api: str, key: str, db: str, n: int, model: str
) -> tuple[list[float], list[float]]:
    """``n`` sequential blocking flex calls to ``model``: (added wait ms, i.e. answer received
    minus row finished, and round trip ms)."""
    added, total = [], []
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": model, "input": "bench", "service_tier": "flex"}
    async with httpx.AsyncClient(timeout=60) as client:
        with psycopg.connect(db, autocommit=True) as conn:
            for _ in range(n):
                start = time.time()
                response = await client.post(api + "/responses", json=body, headers=headers)
                got = time.time()
                response.raise_for_status()
                rid = response.headers["x-request-id"]
                row = conn.execute("SELECT finished_at FROM requests WHERE id = %s", (rid,))
                (finished,) = row.fetchone() or (None,)
                added.append((got - finished.timestamp()) * 1000)
                total.append((got - start) * 1000)
    return added, total
