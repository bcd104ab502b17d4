"""Reads the ``/metrics`` of every deployment that declares its ``engine:``, one loop per
deployment per process (never per call), and hands each reading to the deployment's
:class:`~app.upstream.engine_watch.EngineWatch`.

Runs wherever deferred calls start (each worker, and a gateway's in-process worker); a
reading that leaves room wakes the router's waiting deferred calls.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import httpx

from app.upstream.deployment import Deployment
from app.upstream.engine_metrics import BadMetrics, parse_metrics
from app.upstream.reasons import reason
from app.upstream.router import Router

log = logging.getLogger("tiergate.engine")


class EngineReader:
    """The metrics loops of one process's engine deployments."""

    def __init__(self, router: Router, *, client: httpx.AsyncClient | None = None) -> None:
        self.router = router
        self.deployments = [
            d for fleet in router.fleets.values() for d in fleet.deployments if d.engine
        ]
        self._client = client

    async def run(self) -> None:
        """Read every engine deployment's metrics until cancelled."""
        if not self.deployments:
            return
        own = self._client is None
        client = self._client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=len(self.deployments))
        )
        try:
            async with asyncio.TaskGroup() as group:
                for deployment in self.deployments:
                    group.create_task(self._loop(client, deployment))
        finally:
            if own:
                await client.aclose()

    async def _loop(self, client: httpx.AsyncClient, deployment: Deployment) -> None:
        assert deployment.engine is not None
        every_s = deployment.engine.config.read_every_s
        while True:
            started = self.router.clock()
            await self.read_once(client, deployment)
            await asyncio.sleep(max(0.0, every_s - (self.router.clock() - started)))

    async def read_once(self, client: httpx.AsyncClient, deployment: Deployment) -> None:
        """One reading of ``deployment``'s engine, taken or recorded as a failure."""
        watch = deployment.engine
        assert watch is not None
        url = deployment.config.engine_metrics_url()
        shown = _shown(url)
        try:
            response = await client.get(
                url, headers=deployment.headers(), timeout=watch.config.timeout_s
            )
            if response.status_code != 200:
                raise BadMetrics(f"{shown} answered {response.status_code}")
            reading = parse_metrics(watch.kind, response.text)
        except Exception as exc:  # whatever it is, the declared capacity rules meanwhile
            if isinstance(exc, BadMetrics):
                why = str(exc)
            elif isinstance(exc, httpx.HTTPError):
                why = f"cannot read {shown}: {reason(exc)}"
            else:
                why = f"cannot read {shown}: {type(exc).__name__}: {exc}"
            if watch.failed(why):
                log.warning(
                    "deployment %s/%s: its engine's metrics are unusable (%s); deferred calls"
                    " follow the declared capacity until they are readable again",
                    deployment.model.name,
                    deployment.name,
                    why,
                )
            return
        recovered = watch.error is not None and watch.failures > 0
        if watch.read(reading, self.router.clock(), deployment.deferred_in_flight):
            self.router.wake()
        if recovered:
            log.info(
                "deployment %s/%s: its engine's metrics are readable again",
                deployment.model.name,
                deployment.name,
            )


def _shown(url: str) -> str:
    """The URL as logs and ``tiergate deployments`` show it: no user or password."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
