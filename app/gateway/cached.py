"""Calls answered from the response cache, on every tier, at once.

A hit is recorded as a finished request row (``requests.cache`` says which kind of hit), its
usage counted with every input token cached and its cost 0, then answered the way its tier
and ``stream`` ask: a JSON body, a background Response already completed, or the stored
answer replayed as a normal event stream.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

from starlette.responses import Response, StreamingResponse

from app.cache.service import Lookup, ResponseCache, hit_answer
from app.gateway.deferred import result_response, wants_usage
from app.gateway.new_rows import call_columns
from app.keys import ApiKey
from app.metrics import Metrics
from app.openai.errors import json_response
from app.openai.objects import response_object
from app.openai.replay import replayed
from app.openai.validation import Call
from app.store.cache import HitRow
from app.store.new_requests import new_request_columns
from app.store.requests import RequestRow
from app.vocabulary import PriceTier, Status, Tier

FREE = Decimal(0)


class CachedAnswers:
    """Answers cache hits and records them."""

    def __init__(
        self,
        cache: ResponseCache,
        metrics: Metrics,
        settle: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.settle = settle  # corrects a rate-limited key's tokens by the hit's usage

    async def answer(self, call: Call, key: ApiKey, lookup: Lookup, *, rid: str) -> Response:
        """The hit ``lookup`` as ``call``'s answer (its id: ``rid``), once its row is stored."""
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        body, usage = hit_answer(call.endpoint, call.body, lookup.answer, now)
        row = HitRow(
            **call_columns(call, rid, key.id),
            response_body=body,
            input_tokens=usage.input,
            output_tokens=usage.output,
            total_tokens=usage.total,
            cached_tokens=usage.cached,
            reasoning_tokens=usage.reasoning,
            usage_estimated=usage.estimated,
            cost_usd=FREE,
            cache=lookup.result,
            at=now,
        )
        await self.cache.record_hit(row)
        if self.settle is not None and call.estimated_tokens:
            self.settle(call.key_id, call.estimated_tokens, usage.total or 0)
        tier = PriceTier.FLEX if call.tier == Tier.FLEX else PriceTier.DEFAULT
        self.metrics.observe_usage(call.model.name, tier, call.key_name, usage, FREE)
        self.metrics.observe_request(
            call.endpoint, call.tier, Status.COMPLETED, time.perf_counter() - started
        )
        view = _row_view(row)
        headers = {"x-request-id": rid}  # x-tiergate-cache is added by the tier middleware
        if call.stream:
            events = list(replayed(view, include_usage=wants_usage(call.body)))
            return StreamingResponse(
                _sent(events),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        if call.background:
            return json_response(response_object(view), headers=headers)
        response = result_response(view)
        response.headers.update(headers)
        return response


async def _sent(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def _row_view(row: HitRow) -> RequestRow:
    """The stored row as the answer builders read it."""
    return RequestRow(
        **new_request_columns(row),
        status=Status.COMPLETED,
        created_at=row.at,
        finished_at=row.at,
        response_status=200,
        response_body=row.response_body,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        total_tokens=row.total_tokens,
        cached_tokens=row.cached_tokens,
        reasoning_tokens=row.reasoning_tokens,
        usage_estimated=row.usage_estimated,
        cost_usd=row.cost_usd,
        cache=str(row.cache),
    )
