"""The relay sends whole server-sent events only, so a broken stream never ends mid-event."""

from __future__ import annotations

from app.openai.sse import events_end, events_in


def test_events_end_is_after_the_last_blank_line():
    whole = b"event: a\ndata: {}\n\nevent: b\ndata: {}\n\n"
    assert events_end(whole) == len(whole)
    assert events_end(whole + b'event: c\ndata: {"half') == len(whole)
    assert events_end(b'data: {"no end yet"') == 0
    assert events_end(b"") == 0


def test_crlf_line_endings_count_too():
    whole = b"data: 1\r\n\r\ndata: 2\r\n\r\n"
    assert events_end(whole + b"data: 3\r\n") == len(whole)
    assert events_in(whole, len(whole)) == 2


def test_events_in_counts_only_up_to_the_end():
    data = b"data: 1\n\ndata: 2\n\ndata: 3"
    end = events_end(data)
    assert (end, events_in(data, end)) == (len(b"data: 1\n\ndata: 2\n\n"), 2)
