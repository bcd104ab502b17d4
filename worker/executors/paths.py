"""Which path a deferred row runs on: the cheapest that can still finish inside its window.

A provider's Batch API (``executor: batch``) when the window's remaining time exceeds the
provider's turnaround plus a margin; else its flex tier (``executor: flex``, or the ``flex``
fallback of a ``batch`` deployment) when one flex call fits in what remains; else ``direct``:
one call to a realtime endpoint, routed among the model's deployments as realtime calls are.
Embeddings always run ``direct`` (providers have no flex tier for them, and a Batch API job
for an embedding is rarely worth its wait); so do rows that stream their events (a background
Response created with ``stream=true``: a job cannot stream) on the batch path, and Responses
calls to a chat-only deployment (translated per call). A pinned row
(``x-tiergate-deployment``) keeps its deployment and only chooses among that one's paths.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from app.settings import DeploymentConfig, ModelConfig
from app.vocabulary import BatchApi, Endpoint, ExecutorKind, UpstreamApi

# Only these APIs have a flex tier and a Batch API format that tiergate speaks.
PROVIDER_ENDPOINTS = (Endpoint.RESPONSES, Endpoint.CHAT)


@dataclass(frozen=True)
class Path:
    """How a row runs: the executor, and the deployment it must go to (None: routed)."""

    executor: ExecutorKind
    deployment: str | None = None


DIRECT = Path(ExecutorKind.DIRECT)


def choose(
    model: ModelConfig,
    endpoint: str,
    pin: str | None,
    expires_at: dt.datetime,
    now: dt.datetime,
    *,
    batch_apis: Collection[str] = tuple(BatchApi),
) -> Path:
    """The path of a row of ``model`` for ``endpoint`` whose window ends at ``expires_at``;
    a Batch API path only to a provider whose API is in ``batch_apis`` (none for a row that
    streams its events)."""
    if endpoint not in PROVIDER_ENDPOINTS:
        return Path(ExecutorKind.DIRECT, pin)
    left_s = (expires_at - now).total_seconds()
    candidates = [d for d in model.deployments if pin is None or d.name == pin]
    for deployment in candidates:
        if (
            deployment.executor == ExecutorKind.BATCH
            and deployment.batch.api in batch_apis
            and _fits_batch(deployment, left_s)
            and not _translated(model, deployment, endpoint)
        ):
            return Path(ExecutorKind.BATCH, deployment.name)
    for deployment in candidates:
        if _has_flex(deployment) and left_s >= deployment.flex.timeout_s:
            return Path(ExecutorKind.FLEX, deployment.name)
    return Path(ExecutorKind.DIRECT, pin)


def _translated(model: ModelConfig, deployment: DeploymentConfig, endpoint: str) -> bool:
    """A Responses call to a chat-only deployment (translated per call: not in a job)."""
    return endpoint == Endpoint.RESPONSES and (deployment.api or model.api) == UpstreamApi.CHAT


def _fits_batch(deployment: DeploymentConfig, left_s: float) -> bool:
    return left_s >= deployment.batch.turnaround_s + deployment.batch.margin_s


def _has_flex(deployment: DeploymentConfig) -> bool:
    if deployment.executor == ExecutorKind.FLEX:
        return True
    return (
        deployment.executor == ExecutorKind.BATCH and deployment.batch.fallback == ExecutorKind.FLEX
    )
