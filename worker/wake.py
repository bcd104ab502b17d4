"""Wake workers when a retried job falls due.

procrastinate's workers learn of new jobs by LISTEN (a trigger NOTIFYs on insert), but a job
put back with a later ``scheduled_at`` notifies nobody: it would wait for the next fetch poll
(every ``fetch_job_polling_interval``, 2 s here), so a 0.5 s backoff became 2 s and every
retry ran late by up to a poll. :class:`Waker` sends procrastinate's own "job inserted"
notification once the retry is due, on the channels its workers listen to.
"""

from __future__ import annotations

import asyncio
import json
import logging

from procrastinate.connector import BaseAsyncConnector
from procrastinate.manager import get_channel_for_queues

log = logging.getLogger("tiergate.worker")

# The retried job is written back by procrastinate after the retry decision: wake a little
# after it is due, so that the job is surely fetchable (the poll still backs this up).
MARGIN_S = 0.05
NOTIFY = "SELECT pg_notify(%(any)s, %(payload)s), pg_notify(%(queue)s, %(payload)s)"


class Waker:
    """Schedules one NOTIFY per retry, at the time the retry is due."""

    def __init__(self, connector: BaseAsyncConnector) -> None:
        self._connector = connector
        self._tasks: set[asyncio.Task[None]] = set()

    def wake_at_due(self, job_id: int | None, queue: str, delay_s: float) -> None:
        """Notify workers of ``queue`` in ``delay_s`` seconds (from a running event loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (not in a worker): the poll will find the job
        loop.call_later(max(0.0, delay_s) + MARGIN_S, self._start, job_id, queue)

    def _start(self, job_id: int | None, queue: str) -> None:
        task = asyncio.ensure_future(self._notify(job_id, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self, job_id: int | None, queue: str) -> None:
        (any_queue,) = get_channel_for_queues(None)
        (this_queue,) = get_channel_for_queues([queue])
        payload = json.dumps({"type": "job_inserted", "job_id": job_id})
        try:
            await self._connector.execute_query_async(
                NOTIFY, any=any_queue, queue=this_queue, payload=payload
            )
        except Exception as exc:  # the poll still picks the job up
            log.debug("could not wake workers for job %s: %r", job_id, exc)
