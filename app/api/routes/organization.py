"""``/v1/organization/usage/{completions,embeddings}`` and ``/v1/organization/costs``:
every key's usage and costs in the shape of OpenAI's organization usage API, for admin keys
(``tiergate keys create --admin``) only.

Buckets are aligned on the Unix epoch (a ``1d`` bucket is a UTC day) and clamped to
[``start_time``, ``end_time``); requests are counted in the bucket of their finish time. Every
bucket of a page is listed, empty ones with ``results: []``. ``next_page`` is the cursor of
the next page of buckets.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.routes.params import services
from app.gateway.middleware.auth import current_key
from app.openai.errors import APIError, bad_request, json_response
from app.store.usage import BucketRow, buckets
from app.vocabulary import AccessCode, Endpoint

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# (default, maximum) buckets per page, as OpenAI's API has them.
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COSTS_LIMITS = {"1d": (7, 180)}
COMPLETIONS = [str(Endpoint.RESPONSES), str(Endpoint.CHAT)]
EMBEDDINGS = [str(Endpoint.EMBEDDINGS)]
USAGE_GROUPS = ("model", "api_key_id", "project_id")
COMPLETIONS_GROUPS = (*USAGE_GROUPS, "batch")
COSTS_GROUPS = ("project_id", "line_item", "model", "api_key_id")
PAGE_PREFIX = "page_"
MAX_DIGITS = 12


def _admin(request: Request) -> None:
    if not current_key(request.scope).is_admin:
        raise APIError(
            403,
            "This API key may not read the organization's usage and costs: use a key created"
            " with 'tiergate keys create --admin'.",
            type="invalid_request_error",
            code=AccessCode.INSUFFICIENT_PERMISSIONS,
        )


def _seconds(request: Request, name: str, *, required: bool) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise bad_request(f"Missing required parameter: '{name}'.", param=name)
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS):
        raise bad_request(f"'{name}' must be a Unix time in seconds.", param=name)
    return int(raw)


def _list(request: Request, name: str) -> list[str]:
    """A repeated (``name=a&name=b``, ``name[]=a``) or comma-separated query parameter."""
    values = request.query_params.getlist(name) + request.query_params.getlist(f"{name}[]")
    return [part for value in values for part in value.split(",") if part]


def _groups(request: Request, allowed: tuple[str, ...]) -> list[str]:
    groups = _list(request, "group_by")
    for group in groups:
        if group not in allowed:
            raise bad_request(
                f"'group_by' values must be among {list(allowed)}; got {group!r}.",
                param="group_by",
            )
    return list(dict.fromkeys(groups))


def _limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS) or not (
        1 <= int(raw) <= maximum
    ):
        raise bad_request(f"'limit' must be an integer from 1 to {maximum}.", param="limit")
    return int(raw)


class Window:
    """The buckets of one page: their width and bounds, and the next page's cursor."""

    def __init__(self, request: Request, limits: dict[str, tuple[int, int]]) -> None:
        width_name = request.query_params.get("bucket_width") or "1d"
        if width_name not in limits:
            raise bad_request(
                f"'bucket_width' must be one of {list(limits)}.", param="bucket_width"
            )
        self.width = WIDTHS[width_name]
        start = _seconds(request, "start_time", required=True)
        assert start is not None
        end = _seconds(request, "end_time", required=False)
        self.start = start
        self.end = end if end is not None else int(time.time()) + 1
        if self.end <= self.start:
            raise bad_request("'end_time' must be after 'start_time'.", param="end_time")
        limit = _limit(request, *limits[width_name])
        first = self.start - self.start % self.width
        page = request.query_params.get("page")
        if page:
            at = page.removeprefix(PAGE_PREFIX)
            if not (page.startswith(PAGE_PREFIX) and at.isdigit() and len(at) <= MAX_DIGITS):
                raise bad_request("'page' must be a 'next_page' value.", param="page")
            first = max(first, int(at))
        self.first = first
        self.stop = min(self.end, first + limit * self.width)
        self.next_page = f"{PAGE_PREFIX}{self.stop}" if self.stop < self.end else None

    def bucket_starts(self) -> list[int]:
        return list(range(self.first, self.stop, self.width))

    def page(self, rows: list[BucketRow], result: Any) -> dict[str, Any]:
        """OpenAI's page of buckets; ``result`` turns a row into a result object."""
        by_start: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_start.setdefault(int(row.start.timestamp()), []).append(result(row))
        data = [
            {
                "object": "bucket",
                "start_time": max(at, self.start),
                "end_time": min(at + self.width, self.end),
                "results": by_start.get(at, []),
            }
            for at in self.bucket_starts()
        ]
        return {
            "object": "page",
            "data": data,
            "has_more": self.next_page is not None,
            "next_page": self.next_page,
        }

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The finish times this page counts."""
        return (
            dt.datetime.fromtimestamp(max(self.first, self.start), dt.UTC),
            dt.datetime.fromtimestamp(self.stop, dt.UTC),
        )


async def _rows(
    request: Request,
    window: Window,
    endpoints: list[str],
    groups: list[str],
    *,
    priced_only: bool = False,
) -> list[BucketRow]:
    start, end = window.bounds()
    return await buckets(
        services(request).engine,
        endpoints=endpoints,
        start=start,
        end=end,
        width_s=window.width,
        group_by=groups,
        models=_list(request, "models") or None,
        key_ids=_list(request, "api_key_ids") or None,
        priced_only=priced_only,
    )


def _grouped(row: BucketRow, fields: tuple[str, ...]) -> dict[str, Any]:
    return {field: row.groups.get(field) for field in fields}


async def completions(request: Request) -> Response:
    _admin(request)
    window = Window(request, USAGE_LIMITS)
    groups = _groups(request, COMPLETIONS_GROUPS)
    rows = await _rows(request, window, COMPLETIONS, groups)

    def result(row: BucketRow) -> dict[str, Any]:
        return {
            "object": "organization.usage.completions.result",
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "input_cached_tokens": row.cached_tokens,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": row.requests,
            "user_id": None,
            **_grouped(row, COMPLETIONS_GROUPS),
        }

    return json_response(window.page(rows, result))


async def embeddings(request: Request) -> Response:
    _admin(request)
    window = Window(request, USAGE_LIMITS)
    groups = _groups(request, USAGE_GROUPS)
    rows = await _rows(request, window, EMBEDDINGS, groups)

    def result(row: BucketRow) -> dict[str, Any]:
        return {
            "object": "organization.usage.embeddings.result",
            "input_tokens": row.input_tokens,
            "num_model_requests": row.requests,
            "user_id": None,
            **_grouped(row, USAGE_GROUPS),
        }

    return json_response(window.page(rows, result))


async def costs(request: Request) -> Response:
    _admin(request)
    window = Window(request, COSTS_LIMITS)
    groups = _groups(request, COSTS_GROUPS)
    rows = await _rows(request, window, [*COMPLETIONS, *EMBEDDINGS], groups, priced_only=True)

    def result(row: BucketRow) -> dict[str, Any]:
        value = float(row.cost_usd) if row.cost_usd is not None else 0.0
        extra: dict[str, Any] = {g: row.groups[g] for g in ("model", "api_key_id") if g in groups}
        return {
            "object": "organization.costs.result",
            "amount": {"value": value, "currency": "usd"},
            "line_item": row.groups.get("line_item"),
            "project_id": row.groups.get("project_id"),
            **extra,
        }

    return json_response(window.page(rows, result))


routes = [
    Route("/v1/organization/usage/completions", completions, methods=["GET"]),
    Route("/v1/organization/usage/embeddings", embeddings, methods=["GET"]),
    Route("/v1/organization/costs", costs, methods=["GET"]),
]
