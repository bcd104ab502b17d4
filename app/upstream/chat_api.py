"""A chat-only deployment's answers presented as if it spoke the Responses API.

``UpstreamClient.open`` sends a Responses call to such a deployment as a chat call (see
``app/openai/chat_request.py``) and hands its callers (the realtime proxy, the workers) an
``httpx.Response`` whose body is the Response object, or the Responses event stream, that
the chat answer stands for (``chat_answer.py``, ``chat_stream.py``). Error answers are
handed over as the upstream sent them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from app.openai.chat_answer import response_from_chat
from app.openai.chat_stream import StreamTranslator, chat_events, sse
from app.vocabulary import ErrorCode

# The upstream's headers worth keeping on a translated answer (not its length or encoding).
KEPT_HEADERS = ("retry-after", "retry-after-ms", "openai-processing-ms", "x-request-id")


def _headers(upstream: httpx.Response, content_type: str) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in upstream.headers.items() if k in KEPT_HEADERS]
    return [("content-type", content_type), *kept]


class BadChatAnswer(Exception):
    """The chat answer is not a JSON object (``ErrorCode.UPSTREAM_BAD_RESPONSE``)."""

    code = ErrorCode.UPSTREAM_BAD_RESPONSE


def translated_reply(
    upstream: httpx.Response, request: dict[str, Any], content: bytes
) -> httpx.Response:
    """A whole chat answer (``content``) as a Response object."""
    try:
        chat = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise BadChatAnswer("upstream sent invalid JSON") from None
    if not isinstance(chat, dict):
        raise BadChatAnswer("upstream sent JSON that is not a chat completion")
    body = json.dumps(response_from_chat(request, chat), separators=(",", ":")).encode()
    return httpx.Response(
        upstream.status_code,
        headers=_headers(upstream, "application/json"),
        content=body,
        request=upstream.request,
    )


class _TranslatedStream(httpx.AsyncByteStream):
    """The chat stream of ``upstream``, read as it arrives, as Responses events."""

    def __init__(self, upstream: httpx.Response, request: dict[str, Any]) -> None:
        self.upstream = upstream
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        translator = StreamTranslator(self.request)
        yield sse(translator.start())
        pending = b""
        async for chunk in self.upstream.aiter_bytes():
            data = pending + chunk
            cut = data.rfind(b"\n") + 1  # whole lines only
            pending = data[cut:]
            if cut and (events := _translate(translator, data[:cut])):
                yield sse(events)
        events = _translate(translator, pending) if pending else []
        events += translator.finish()  # a server that ends without [DONE]
        if events:
            yield sse(events)

    async def aclose(self) -> None:
        await self.upstream.aclose()


def _translate(translator: StreamTranslator, lines: bytes) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for chunk in chat_events(lines):
        if chunk is None:
            events += translator.finish()
        elif isinstance(chunk.get("error"), dict | str) and not chunk.get("choices"):
            failure = chunk["error"]
            message = failure.get("message") if isinstance(failure, dict) else failure
            events += translator.fail(str(message or "the upstream failed mid-stream"))
        elif not translator.finished:
            events += translator.feed(chunk)
    return events


def translated_stream(upstream: httpx.Response, request: dict[str, Any]) -> httpx.Response:
    """A chat stream as a Responses event stream (read lazily, closed with the upstream)."""
    return httpx.Response(
        upstream.status_code,
        headers=_headers(upstream, "text/event-stream"),
        stream=_TranslatedStream(upstream, request),
        request=upstream.request,
    )
