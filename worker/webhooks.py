"""Deliver webhook events: one delivery loop per worker process (docs/webhooks.md).

The loop sleeps until woken: by NOTIFY ``tiergate_webhooks`` (the triggers that write the
outbox send it when their transaction commits), by a retry of its own falling due, by a
delivery of its own ending (a slot of that endpoint is free), or by the safety-net look every
``webhooks.poll_s`` (retries of other processes, leases of dead ones). Each look claims due
deliveries in bulk and sends each one in its own task: ``per_endpoint`` at most in flight
per endpoint, ``timeout_s`` per attempt, redirects never followed, the response body never
read. Before every attempt the URL is checked again and the connection goes to the address
that was checked (DNS can change). A failed attempt is due again after an exponential
backoff, under the same ``webhook-id``, until the event is ``give_up_after_s`` old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from app.openai.webhooks import event_body, signed_headers
from app.settings import WebhooksConfig
from app.store.db import report_failed_pass
from app.store.webhooks import Claimed, WebhookStore
from app.upstream.reasons import reason
from app.upstream.webhook_urls import UnsafeUrl, check

log = logging.getLogger("tiergate.webhooks")

USER_AGENT = "tiergate-webhooks/1"
# A claim lasts the attempt's timeout and this margin: a worker that dies mid-attempt gives
# its delivery back when the lease lapses.
LEASE_MARGIN_S = 5.0


def backoff_s(
    attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): ``base * 2^(attempt-1)``,
    capped at ``max_s``, minus up to a quarter of it at random (retries of many events to one
    endpoint that failed together spread out)."""
    full = min(base_s * 2.0 ** min(attempt - 1, 60), max_s)
    return full * (0.75 + 0.25 * rand())


def schedule(config: WebhooksConfig) -> list[float]:
    """The seconds after the event at which each retry starts, without jitter, up to the
    give-up age (what docs/webhooks.md tabulates)."""
    times: list[float] = []
    at, attempt = 0.0, 1
    while True:
        at += min(config.retry_base_s * 2.0 ** min(attempt - 1, 60), config.retry_max_s)
        if at > config.give_up_after_s:
            return times
        times.append(at)
        attempt += 1


class WebhookDeliverer:
    """The delivery loop of one worker process."""

    def __init__(
        self,
        config: WebhooksConfig,
        store: WebhookStore,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._transport = transport
        self._wake = asyncio.Event()
        self._inflight: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self.lease_s = config.timeout_s + LEASE_MARGIN_S

    def wake(self, _payload: str = "") -> None:
        """Look for due deliveries now (a NOTIFY, a reconnection)."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; attempts under way are abandoned (their leases lapse)."""
        client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=self.config.timeout_s,
            trust_env=False,
            transport=self._transport,
            headers={"user-agent": USER_AGENT},
        )
        self._wake.set()  # anything due from before this process started
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_s)
                self._wake.clear()
                try:
                    await self._dispatch(client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    report_failed_pass(log, exc, "webhook deliveries")
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.aclose()

    async def _dispatch(self, client: httpx.AsyncClient) -> None:
        while True:
            free = self.config.claim - len(self._tasks)
            if free <= 0:
                return
            busy = {endpoint: n for endpoint, n in self._inflight.items() if n > 0}
            rows = await self.store.claim(
                busy, per_endpoint=self.config.per_endpoint, total=free, lease_s=self.lease_s
            )
            for row in rows:
                self._inflight[row.endpoint_id] += 1
                task = asyncio.create_task(self._deliver(client, row), name=f"webhook-{row.id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(rows) < free:
                return

    async def _deliver(self, client: httpx.AsyncClient, row: Claimed) -> None:
        try:
            status, error = await self._attempt(client, row)
            if error is None:
                await self.store.delivered(row.id, row.attempts, status or 0)
                return
            delay = backoff_s(row.attempts, self.config.retry_base_s, self.config.retry_max_s)
            result = await self.store.failed(
                row.id,
                row.attempts,
                status=status,
                error=error,
                delay_s=delay,
                give_up_s=self.config.give_up_after_s,
                disable_s=self.config.disable_after_s,
            )
            if result is None:
                return
            if result.disabled is not None:
                log.warning(
                    "webhook endpoint %s disabled: %s (enable it again with"
                    " tiergate webhooks enable %s)",
                    row.endpoint_id,
                    result.disabled,
                    row.endpoint_id,
                )
            if result.given_up:
                log.warning(
                    "webhook %s (%s %s) to endpoint %s given up after %d attempts: %s",
                    row.event_id,
                    row.event_type,
                    row.object_id,
                    row.endpoint_id,
                    row.attempts,
                    error,
                )
            else:
                log.info(
                    "webhook %s to endpoint %s: attempt %d failed (%s); next in %.1fs",
                    row.event_id,
                    row.endpoint_id,
                    row.attempts,
                    error,
                    delay,
                )
                self._wake_in(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database: the lease lapses and the attempt is redone
            log.warning("webhook %s: result not stored (%s)", row.event_id, exc)
        finally:
            self._inflight[row.endpoint_id] -= 1
            if self._inflight[row.endpoint_id] <= 0:
                del self._inflight[row.endpoint_id]
            self._wake.set()  # a slot of this endpoint is free

    async def _attempt(
        self, client: httpx.AsyncClient, row: Claimed
    ) -> tuple[int | None, str | None]:
        """Send one attempt: (HTTP status or None, None if accepted else the error)."""
        try:
            target = await check(row.url, allow_private=self.config.allow_private)
        except UnsafeUrl as exc:
            return None, f"refused: {exc}"
        body = event_body(row.event_id, row.event_type, row.created_at, row.object_id)
        secrets = [row.secret] + ([row.previous_secret] if row.previous_secret else [])
        headers = signed_headers(secrets, row.event_id, int(time.time()), body)
        headers["host"] = urlsplit(target.url).netloc
        try:
            async with client.stream(
                "POST",
                target.pinned_url(),
                content=body,
                headers=headers,
                extensions={"sni_hostname": target.host},
            ) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return None, f"timed out after {self.config.timeout_s:g} s"
        except httpx.HTTPError as exc:
            return None, reason(exc)
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    def _wake_in(self, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self._wake.set()

        timer = loop.call_later(delay_s + 0.01, fire)
        self._timers.add(timer)
