"""Watching a process's resident memory from a test."""

from __future__ import annotations

import threading

import psutil

MB = 1024 * 1024


class PeakRSS:
    """Samples a process's resident memory in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int, every_s: float = 0.01) -> None:
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
