"""The response cache's keys: what decides an answer, what may be stored, a hit's usage."""

from __future__ import annotations

import datetime as dt

from app.cache.canonical import prompt_text, request_key, storable
from app.cache.service import hit_answer

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
NONE: frozenset[str] = frozenset()


def test_field_order_and_non_deciding_fields_do_not_change_the_key():
    a = {"model": "m", "input": "hi", "temperature": 0, "metadata": {"x": "1"}}
    b = {"temperature": 0, "input": "hi", "model": "m", "stream": True, "service_tier": "flex"}
    assert request_key(RESPONSES, a, NONE).exact == request_key(RESPONSES, b, NONE).exact


def test_every_deciding_field_changes_the_key():
    base = {"model": "m", "input": "hi"}
    key = request_key(RESPONSES, base, NONE)
    for field, value in [
        ("input", "hello"),
        ("model", "other"),
        ("instructions", "be brief"),
        ("tools", [{"type": "function", "name": "f"}]),
        ("tool_choice", "required"),
        ("text", {"format": {"type": "json_object"}}),
        ("temperature", 0.5),
        ("max_output_tokens", 10),
    ]:
        changed = request_key(RESPONSES, {**base, field: value}, NONE)
        assert changed.exact != key.exact, field
    assert request_key(CHAT, base, NONE).exact != key.exact  # another endpoint


def test_ignored_sampling_fields_leave_the_key_alone():
    ignore = frozenset({"temperature"})
    cold = request_key(RESPONSES, {"model": "m", "input": "hi", "temperature": 0}, ignore)
    hot = request_key(RESPONSES, {"model": "m", "input": "hi", "temperature": 1.5}, ignore)
    assert cold == hot


def test_the_context_is_the_request_without_its_prompt():
    a = request_key(CHAT, {"model": "m", "messages": [{"role": "user", "content": "a"}]}, NONE)
    b = request_key(CHAT, {"model": "m", "messages": [{"role": "user", "content": "b"}]}, NONE)
    tools = request_key(
        CHAT,
        {"model": "m", "messages": [{"role": "user", "content": "b"}], "tools": [{"x": 1}]},
        NONE,
    )
    assert a.context == b.context and a.exact != b.exact
    assert tools.context != b.context


def test_prompt_text_is_role_lines_and_none_for_non_text_parts():
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "DNS?"}]
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": parts},
        ]
    }
    assert prompt_text(CHAT, body) == "system: Be brief.\nuser: What is DNS?"
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    assert prompt_text(CHAT, {"messages": [{"role": "user", "content": [image]}]}) is None
    assert prompt_text(RESPONSES, {"input": "hi"}) == "user: hi"


def test_what_may_be_stored():
    done = {"choices": [{"finish_reason": "stop", "message": {"content": "x"}}]}
    cut = {"choices": [{"finish_reason": "length", "message": {"content": "x"}}]}
    assert storable(CHAT, {}, done)
    assert not storable(CHAT, {}, cut)  # truncated
    assert not storable(CHAT, {"n": 2}, done)  # samples at the default temperature 1
    assert storable(CHAT, {"n": 2, "temperature": 0}, done)  # deterministic copies
    assert storable(RESPONSES, {}, {"status": "completed"})
    assert not storable(RESPONSES, {}, {"status": "incomplete"})
    assert not storable(RESPONSES, {}, None)


def test_a_hit_reports_its_input_as_cached_and_is_created_now():
    now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    cached = {
        "id": "resp_old",
        "created_at": 1,
        "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
    }
    body, usage = hit_answer(RESPONSES, {"input": "x"}, cached, now)
    assert body["created_at"] == int(now.timestamp())
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 7}
    assert (usage.input, usage.cached, usage.output, usage.estimated) == (7, 7, 3, False)
    assert cached["created_at"] == 1  # the stored entry is not changed
    chat = {"created": 1, "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
    body, usage = hit_answer(CHAT, {}, chat, now)
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert usage.cached == 4
    # No usage in the stored answer: tiergate's estimate, all of its input cached.
    _, usage = hit_answer(RESPONSES, {"input": "abcdefgh"}, {"output": []}, now)
    assert usage.estimated and usage.input == 2 and usage.cached == 2
