"""Anthropic's Message Batches as a provider Batch API: the pieces without HTTP (states,
custom ids, results, refused lines); the calls themselves run end to end in
tests/e2e/test_anthropic_batch_executor.py."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest

from app.upstream.anthropic_batches import (
    AnthropicBatches,
    _answers,
    _state,
    agreeing_status,
    custom_id,
)
from app.upstream.batch_api import BadOutput, RefusedLines

COUNTS = {"processing": 0, "succeeded": 2, "errored": 0, "canceled": 0, "expired": 0}


def _batch(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "msgbatch_1", "processing_status": status, "request_counts": COUNTS, **extra}


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (_batch("in_progress"), "in_progress"),
        (_batch("canceling", cancel_initiated_at="2025-01-01T00:00:00Z"), "cancelling"),
        (_batch("ended"), "completed"),
        (_batch("ended", cancel_initiated_at="2025-01-01T00:00:00Z"), "cancelled"),
        (_batch("ended", request_counts={**COUNTS, "expired": 1}), "expired"),
        (
            _batch(
                "ended",
                request_counts={**COUNTS, "canceled": 1, "expired": 1},
                cancel_initiated_at="2025-01-01T00:00:00Z",
            ),
            "cancelled",
        ),
    ],
)
def test_states_in_openais_words(batch: dict[str, Any], expected: str) -> None:
    assert _state(batch).status == expected


def test_row_ids_are_custom_ids_and_others_are_hashed() -> None:
    for rid in ("resp_0123456789abc" + "f" * 20, "chatcmpl-" + "0" * 33, "batch_req_" + "a" * 33):
        assert custom_id(rid) == rid
    long = "x" * 65
    assert custom_id(long) == custom_id(long) and custom_id(long).startswith("h-")
    assert len(custom_id(long)) == 42 and custom_id("a.b") != custom_id("a:b")


@pytest.mark.parametrize(
    ("status", "retryable", "expected"),
    [(400, False, 400), (429, True, 429), (500, True, 500), (529, True, 503), (500, False, 501)],
)
def test_error_statuses_agree_with_the_retry_policy(
    status: int, retryable: bool, expected: int
) -> None:
    assert agreeing_status(status, retryable) == expected


def _result(custom: str, result: dict[str, Any]) -> bytes:
    return json.dumps({"custom_id": custom, "result": result}).encode()


def test_results_become_answers_in_the_lines_formats() -> None:
    message = {
        "id": "msg_1",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    content = b"\n".join(
        [
            _result("resp_a", {"type": "succeeded", "message": message}),
            _result("chatcmpl-b", {"type": "succeeded", "message": message}),
            _result("chatcmpl-c", {"type": "errored", "error": overloaded}),
            _result("chatcmpl-d", {"type": "expired"}),
        ]
    )
    lines = {
        "resp_a": ("resp_a", "/v1/responses", {"model": "m", "input": "x"}),
        "chatcmpl-b": ("chatcmpl-b", "/v1/chat/completions", {"model": "m", "messages": []}),
    }
    answers = {a.custom_id: a for a in _answers(content, lines, 1)}
    assert answers["resp_a"].status == 200 and answers["resp_a"].body["object"] == "response"
    assert answers["resp_a"].body["output"][0]["content"][0]["text"] == "hi"
    assert answers["chatcmpl-b"].body["object"] == "chat.completion"
    assert answers["chatcmpl-b"].body["model"] == "m"
    failed = answers["chatcmpl-c"]
    assert failed.status == 503 and failed.body["error"]["code"] == "upstream_529"
    expired = answers["chatcmpl-d"]
    assert expired.status is None and expired.error is not None
    assert expired.error["code"] == "upstream_batch_expired"


@pytest.mark.parametrize(
    "content",
    [b"<html>", b'{"custom_id": "a"}', b'{"custom_id": "a", "result": {"type": "odd"}}'],
)
def test_garbage_results_are_bad_output(content: bytes) -> None:
    with pytest.raises(BadOutput):
        list(_answers(content, {}, 1))


async def test_lines_anthropic_cannot_express_are_refused_before_anything_is_sent() -> None:
    api = AnthropicBatches(upstream=None)  # type: ignore[arg-type]  # never called
    lines = [
        ("chatcmpl-a", "/v1/chat/completions", {"model": "m", "messages": [], "n": 2}),
        ("resp_b", "/v1/responses", {"model": "m", "input": "x", "top_logprobs": 3}),
        ("chatcmpl-c", "/v1/chat/completions", {"model": "m", "messages": []}),
    ]
    with pytest.raises(RefusedLines) as caught:
        await api.create(
            None,  # type: ignore[arg-type]
            file_id=None,
            lines=lines,
            endpoint="/v1/chat/completions",
            tag="ujob_1",
            window="24h",
        )
    refused = caught.value.refused
    assert set(refused) == {"chatcmpl-a", "resp_b"}
    assert all(e.status == 400 and e.code == "untranslatable_request" for e in refused.values())
    assert refused["chatcmpl-a"].body["error"]["param"] == "n"


class _Deployment:
    def headers(self) -> dict[str, str]:
        return {"authorization": "Bearer sk-test"}


class _Provider:
    """Answers the list of batches, newest first, a page of ``page`` at a time."""

    def __init__(self, batches: list[dict[str, Any]], page: int = 2) -> None:
        self.batches, self.page = batches, page
        self.calls: list[dict[str, Any]] = []

    async def send(self, deployment: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.calls.append({"path": path, **kwargs})
        after = kwargs["params"].get("after_id")
        start = 0 if after is None else [b["id"] for b in self.batches].index(after) + 1
        chosen = self.batches[start : start + self.page]
        more = start + self.page < len(self.batches)
        body = {"data": chosen, "has_more": more, "last_id": chosen[-1]["id"] if chosen else None}
        return httpx.Response(200, json=body)


def _listed(batch_id: str, at: dt.datetime, requests: int) -> dict[str, Any]:
    counts = {**COUNTS, "succeeded": 0, "processing": requests}
    created = at.isoformat().replace("+00:00", "Z")
    return {**_batch("in_progress", request_counts=counts), "id": batch_id, "created_at": created}


async def _find(provider: _Provider, since: dt.datetime, rows: int, exclude: set[str]) -> Any:
    api = AnthropicBatches(upstream=provider)  # type: ignore[arg-type]
    return await api.find(
        _Deployment(),  # type: ignore[arg-type]
        tag="ujob_1",
        since=since,
        rows=rows,
        exclude=exclude,
    )


async def test_find_recognizes_a_batch_by_time_count_and_not_held() -> None:
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    s = dt.timedelta(seconds=1)
    batches = [
        _listed("msgbatch_new", since + 9 * s, 5),  # another count
        _listed("msgbatch_held", since + 8 * s, 3),  # another tiergate job's
        _listed("msgbatch_it", since + 7 * s, 3),
        _listed("msgbatch_before", since - 30 * s, 3),  # before the job
        _listed("msgbatch_old", since - 600 * s, 3),  # paging stops here
        _listed("msgbatch_older", since - 900 * s, 3),
    ]
    provider = _Provider(batches)
    found = await _find(provider, since, 3, {"msgbatch_held"})
    assert found is not None and found.id == "msgbatch_it"
    assert [c["params"].get("after_id") for c in provider.calls] == [
        None,
        "msgbatch_held",
        "msgbatch_before",
    ]
    headers = provider.calls[0]["headers"]
    assert headers["x-api-key"] == "sk-test" and headers["authorization"] is None
    assert headers["anthropic-version"] == "2023-06-01"
    # two candidates: none adopted
    assert await _find(_Provider(batches), since, 3, set()) is None
    assert await _find(_Provider(batches), since, 4, set()) is None
