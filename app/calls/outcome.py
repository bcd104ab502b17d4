"""How a call ended, for every caller: the answer classified, named as asked, measured and priced.

- :func:`answered`: an upstream's whole answer (bytes, any status) as the row's ``Outcome`` and
  the body to send (stamped with tiergate's id; an error in OpenAI's shape).
- :func:`completed`: a deferred call's parsed answer as its ``Outcome``.
- :func:`names` and :func:`renamed`: an answer names the model the client asked for, not the
  deployment's own name for it (``upstream_model``) nor a fallback model's, so it does not
  change with the deployment that served it.
- :class:`Meter`: the usage (reported, else estimated) and cost of a finished call, counted in
  the metrics of the process that finished it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from app.calls.pricing import PriceBook
from app.jsontext import loadb
from app.metrics import Metrics
from app.openai.objects import restore_previous
from app.openai.upstream_errors import normalize_error
from app.openai.usage import measured, usage_of
from app.settings import ModelConfig
from app.store.outcomes import Outcome
from app.upstream.deployment import Deployment
from app.vocabulary import Endpoint, ExecutorKind, Status, upstream_status

# Embedding vectors are bulky and rarely worth keeping; their usage is stored all the same.
STORE_BODY_ENDPOINTS = frozenset({Endpoint.RESPONSES, Endpoint.CHAT})
PREVIOUS = "previous_response_id"


def names(model: ModelConfig, deployment: Deployment) -> tuple[str, str]:
    """The model name in ``deployment``'s answers, and the name the client should see: the
    model it asked for."""
    return deployment.target_model, model.name


def renamed(content: bytes, served: str, asked: str) -> bytes:
    """``content`` naming the model the client asked for, not the deployment's own name (a byte
    splice of the ``"model"`` pair: no re-encoding of the body on the hot path)."""
    if served == asked:
        return content
    for sep in (b'":"', b'": "'):
        content = content.replace(
            b'"model' + sep + served.encode() + b'"', b'"model' + sep + asked.encode() + b'"'
        )
    return content


def answered(
    endpoint: str,
    request: dict[str, Any],
    rid: str,
    status: int,
    content: bytes,
    deployment: str,
    content_type: str | None,
) -> tuple[Outcome, bytes]:
    """The row's outcome of a whole answer, and the body to send: stamped with our id (so it
    can be fetched), or, for an error, in OpenAI's shape."""
    try:
        body = loadb(content)
    except ValueError:
        body = None
    if status >= 400:
        normalized = normalize_error(status, content, content_type)
        if normalized != body:
            content = json.dumps(normalized, separators=(",", ":")).encode()
        error = normalized["error"]
        outcome = Outcome(
            status=Status.FAILED,
            response_status=status,
            response_body=normalized,
            error={"code": error["code"] or upstream_status(status), "message": error["message"]},
            deployment=deployment,
        )
        return outcome, content
    keep = endpoint in STORE_BODY_ENDPOINTS and isinstance(body, dict)
    if keep:
        content = _stamp_id(content, body, rid)
        if endpoint == Endpoint.RESPONSES and request.get(PREVIOUS) is not None:
            restore_previous(body, request)
            content = json.dumps(body, separators=(",", ":")).encode()
    outcome = Outcome(
        status=Status.COMPLETED,
        response_status=status,
        response_body=body if keep else None,
        usage=usage_of(body),
        deployment=deployment,
    )
    return outcome, content


def completed(
    model: ModelConfig,
    deployment: Deployment,
    status: int,
    body: Any,
    text: str,
    executor: ExecutorKind,
) -> Outcome:
    """A deferred call's answer on the path ``executor`` (``text`` as sent, when it can be
    stored as it is)."""
    served, asked = names(model, deployment)
    if served != asked and isinstance(body, dict) and "model" in body:
        body = {**body, "model": asked}
        text = renamed(text.encode(), served, asked).decode() if text else ""
    return Outcome(
        status=Status.COMPLETED,
        response_status=status,
        response_body=body,
        response_text=text or None,
        deployment=deployment.label(model.name),
        executor=executor,
    )


def _stamp_id(content: bytes, body: dict[str, Any], rid: str) -> bytes:
    """The body with our id instead of the upstream's (``body`` is updated too).

    A byte splice of the compact ``"id":"..."`` pair when it is there (the usual case: no
    re-encoding of the whole body on the hot path), else a full re-encode.
    """
    old = body.get("id")
    body["id"] = rid
    if isinstance(old, str):
        pair = b'"id":' + json.dumps(old).encode()
        if pair in content:
            return content.replace(pair, b'"id":' + json.dumps(rid).encode(), 1)
    return json.dumps(body, separators=(",", ":")).encode()


class Meter:
    """Measures and prices finished calls, and counts them in the metrics."""

    def __init__(self, prices: PriceBook, metrics: Metrics | None) -> None:
        self.prices = prices
        self.metrics = metrics

    def priced(self, model: str, tier: str, key: str, request: Any, outcome: Outcome) -> Outcome:
        """``outcome`` (completed) with its usage, estimated when the upstream reported none,
        and its cost on the deployment that served it at pricing ``tier``, on the path it ran
        (``outcome.executor``); counted under ``key``'s name."""
        usage = outcome.usage if outcome.usage.known else measured(request, outcome.response_body)
        cost = self.prices.cost(model, outcome.deployment, tier, usage, outcome.executor)
        if self.metrics is not None:
            self.metrics.observe_usage(model, tier, key, usage, cost)
        return dataclasses.replace(outcome, usage=usage, cost_usd=cost)
