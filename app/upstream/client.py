"""The one HTTP client every caller (realtime proxy and workers) uses to reach providers.

Provider specifics live here: the model-name rewrite, the provider key (read from the
environment at call time, never stored), which failures are worth a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import ASGIApp

from app import tracing
from app.jsontext import dumpb
from app.openai.chat_request import Untranslatable, chat_request, rename_token_limit
from app.openai.errors import error_body
from app.openai.upstream_errors import normalize_error
from app.settings import MOCK_UPSTREAM, Settings
from app.upstream.aiohttp_transport import AiohttpTransport, Whole
from app.upstream.chat_api import BadChatAnswer, translated_reply, translated_stream
from app.upstream.deployment import Deployment
from app.upstream.reasons import reason
from app.vocabulary import CallClass, Endpoint, ErrorCode, upstream_status

log = logging.getLogger("tiergate.upstream")

# Fields that mean something to tiergate and must not reach the provider.
# previous_response_id names a tiergate Response, resolved into the input at acceptance.
GATEWAY_FIELDS = ("service_tier", "background", "previous_response_id")
# Calls beside inference (files, batches) answer within this long unless told otherwise.
PLAIN_TIMEOUT_S = 120.0


@dataclass
class UpstreamError(Exception):
    """A failed upstream call: what happened, as facts (``app/calls/policy.py`` judges them).

    ``status`` is the provider's HTTP status when it answered; ``final`` says the provider
    itself declared the call failed (a ``response.failed`` event): sending it again would
    fail the same way.
    """

    code: str
    message: str
    status: int | None = None
    body: Any = None
    retry_after_s: float | None = None
    final: bool = False

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    body: Any
    text: str


def prepare_body(
    deployment: Deployment,
    body: dict[str, Any],
    endpoint: str = "",
    tier: str | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """The body the provider sees: its own model name, no gateway-only fields (the client's
    ``service_tier`` is tiergate's; ``tier`` is the provider's, e.g. its ``flex``), the
    engine's ``priority`` if given, a chat call's token limit in the field the deployment
    reads (if one is set)."""
    out = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    out["model"] = deployment.target_model
    if tier is not None:
        out["service_tier"] = tier
    if priority is not None:
        out["priority"] = priority
    if deployment.token_field is not None and endpoint == Endpoint.CHAT:
        out = rename_token_limit(out, deployment.token_field)
    return out


def _not_streamed(body: dict[str, Any]) -> dict[str, Any]:
    """A (flex) body that asked for a stream, as a plain call: tiergate replays the result."""
    return {**{k: v for k, v in body.items() if k != "stream_options"}, "stream": False}


def untranslatable(exc: Untranslatable) -> UpstreamError:
    """A Responses call a chat-only deployment cannot take: final, and the client's fault."""
    body = error_body(exc.message, param=exc.param, code=exc.code)
    return UpstreamError(ErrorCode.UNTRANSLATABLE, exc.message, status=400, body=body)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds form only)."""
    with contextlib.suppress(ValueError):
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            return max(0.0, float(headers["retry-after"]))
    return None


def error_from_status(status: int, headers: Mapping[str, str], content: bytes) -> UpstreamError:
    """The failure an error answer stands for; its body in OpenAI's shape whatever the
    provider sent (``{"detail": ...}``, text, HTML), its text as the message, and its own
    code when it gave one (else ``upstream_<status>``)."""
    body = normalize_error(status, content, headers.get("content-type"))
    own = body["error"].get("code")
    return UpstreamError(
        code=own if isinstance(own, str) and own else upstream_status(status),
        message=body["error"]["message"],
        status=status,
        body=body,
        retry_after_s=retry_after(headers),
    )


class UpstreamClient:
    """Owns the pooled httpx clients; ``mock_app`` serves models whose upstream is ``mock``.

    ``transport="aiohttp"`` (the default) puts aiohttp under the httpx API (see
    ``aiohttp_transport.py`` for the measured reason). With ``transport="httpx"``,
    connections are spread over small httpx clients: httpcore checks every idle connection of
    a pool on every request, so one big pool makes each call cost O(pool size).
    """

    def __init__(
        self,
        *,
        mock_app: ASGIApp | None = None,
        max_connections: int = 512,
        transport: str = "aiohttp",
        shards: int = 16,
    ) -> None:
        # Requests go straight to httpx transports: AsyncClient's per-request work (URL and
        # header merging, cookie jar, redirects, auth) buys nothing for a fixed upstream.
        self._transports: list[httpx.AsyncBaseTransport]
        if transport == "aiohttp":
            self._transports = [AiohttpTransport(max_connections=max_connections)]
        else:
            per_shard = max(1, max_connections // shards)
            limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
            self._transports = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(shards)]
        self._next = itertools.cycle(self._transports)
        # Whole answers skip httpx's objects when aiohttp does the wire work (see whole()).
        self._direct: AiohttpTransport | None = None
        if isinstance(self._transports[0], AiohttpTransport):
            self._direct = self._transports[0]
        self._mock = httpx.ASGITransport(app=mock_app) if mock_app is not None else None
        self._plain: dict[bool, httpx.AsyncClient] = {}  # by "is the mock" (see send)

    async def aclose(self) -> None:
        for transport in self._transports:
            await transport.aclose()
        if self._mock is not None:
            await self._mock.aclose()
        for client in self._plain.values():
            await client.aclose()

    async def send(
        self,
        deployment: Deployment,
        method: str,
        path: str,
        *,
        timeout_s: float = PLAIN_TIMEOUT_S,
        **kwargs: Any,
    ) -> httpx.Response:
        """A call to the provider's API beside inference (``/files``, ``/batches``: ``path``
        after the deployment's ``/v1``), with its key; the answer read whole. ``headers``
        given override the deployment's, a None value removes one (Anthropic takes its key
        as ``x-api-key``, not ``authorization``). Transport failures raise ``UpstreamError``;
        error statuses are the caller's to read."""
        mock = deployment.upstream == MOCK_UPSTREAM
        if mock and self._mock is None:
            raise UpstreamError(ErrorCode.UPSTREAM_UNAVAILABLE, "mock upstream not enabled")
        client = self._plain.get(mock)
        if client is None:
            # A small pool of its own: these calls are few (a job's upload, polls, downloads).
            client = self._plain[mock] = httpx.AsyncClient(
                transport=self._mock if mock else None, follow_redirects=False
            )
        base = "http://mock/v1" if mock else deployment.upstream
        given: dict[str, str | None] = {**deployment.headers(), **kwargs.pop("headers", {})}
        headers = {name: value for name, value in given.items() if value is not None}
        async with within(timeout_s):
            with _mapped_errors():
                return await client.request(
                    method, base + path, headers=headers, timeout=timeout_s, **kwargs
                )

    def _request(
        self,
        deployment: Deployment,
        endpoint: str,
        body: dict[str, Any],
        timeout_s: float | None = None,
        tier: str | None = None,
        priority: int | None = None,
    ) -> tuple[httpx.AsyncBaseTransport, httpx.Request]:
        transport: httpx.AsyncBaseTransport
        if deployment.upstream == MOCK_UPSTREAM:
            if self._mock is None:
                raise UpstreamError(ErrorCode.UPSTREAM_UNAVAILABLE, "mock upstream not enabled")
            transport, base = self._mock, "http://mock/v1"
        else:
            transport, base = next(self._next), deployment.upstream
        url, host = _target(base + endpoint.removeprefix("/v1"))
        content, headers = _content(deployment, endpoint, body, host, tier, priority)
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": _timeout(timeout_s or deployment.model.timeout_s)},
        )
        request.read()  # the content at hand, for transports that want it whole
        return transport, request

    async def whole(
        self,
        deployment: Deployment,
        endpoint: str,
        body: dict[str, Any],
        *,
        timeout_s: float | None = None,
        tier: str | None = None,
        call: CallClass | None = None,
    ) -> Whole:
        """One call whose answer is read whole within ``timeout_s`` (else the model's), at
        the provider's service ``tier`` if given, with the engine's priority for a ``call`` of
        its kind (``priority:``), whatever its status; transport failures as ``UpstreamError``.

        With aiohttp under a real provider, the call skips httpx's request and response
        objects (about a tenth of the gateway's CPU per realtime call); the in-process mock
        and a Responses call to a chat-only deployment go through :meth:`open`.
        """
        timeout_s = timeout_s or deployment.model.timeout_s
        priority = deployment.priority_of(call, time.monotonic())
        async with within(timeout_s):
            answer = await self._whole(deployment, endpoint, body, timeout_s, tier, priority)
            if priority is not None and _refused(deployment, answer.status_code, answer.content):
                answer = await self._whole(deployment, endpoint, body, timeout_s, tier, None)
            return answer

    async def _whole(
        self,
        deployment: Deployment,
        endpoint: str,
        body: dict[str, Any],
        timeout_s: float,
        tier: str | None,
        priority: int | None,
    ) -> Whole:
        direct = self._direct
        if (
            direct is None
            or deployment.upstream == MOCK_UPSTREAM
            or (deployment.speaks_chat and endpoint == Endpoint.RESPONSES)
        ):
            async with self._open(
                deployment, endpoint, body, timeout_s, tier, priority
            ) as response:
                content = await read_all(response)
            return Whole(response.status_code, response.headers, content)
        raw = deployment.upstream + endpoint.removeprefix("/v1")
        content, headers = _content(deployment, endpoint, body, _target(raw)[1], tier, priority)
        with _mapped_errors():
            return await direct.whole(raw, headers, content, _timeout(timeout_s))

    async def call(
        self,
        deployment: Deployment,
        endpoint: str,
        body: dict[str, Any],
        *,
        timeout_s: float | None = None,
        tier: str | None = None,
        call: CallClass | None = None,
    ) -> UpstreamReply:
        """One non-streaming call (within ``timeout_s``, else the model's ``timeout_s``; at
        the provider's service ``tier`` if given; see :meth:`whole` for ``call``); raises
        ``UpstreamError`` unless the provider said 2xx."""
        answer = await self.whole(
            deployment, endpoint, _not_streamed(body), timeout_s=timeout_s, tier=tier, call=call
        )
        if answer.status_code >= 400:
            raise error_from_status(answer.status_code, answer.headers, answer.content)
        try:
            text = answer.content.decode()
            return UpstreamReply(answer.status_code, json.loads(text), text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamError(
                ErrorCode.UPSTREAM_BAD_RESPONSE, "upstream sent invalid JSON"
            ) from exc

    @contextlib.asynccontextmanager
    async def open(
        self,
        deployment: Deployment,
        endpoint: str,
        body: dict[str, Any],
        *,
        timeout_s: float | None = None,
        tier: str | None = None,
        call: CallClass | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A call whose body is read by the caller (the realtime proxy relays it); see
        :meth:`whole` for ``tier`` and ``call``.

        A Responses call to a chat-only deployment goes out as a chat call; the caller gets
        its answer as a Response object or Responses event stream (``chat_api.py``).
        """
        priority = deployment.priority_of(call, time.monotonic())
        async with self._open(deployment, endpoint, body, timeout_s, tier, priority) as response:
            if priority is None or response.status_code not in REFUSAL_STATUSES:
                yield response
                return
            content = await read_all(response)  # kept: the caller reads it again
            if not _refused(deployment, response.status_code, content):
                yield response
                return
        async with self._open(deployment, endpoint, body, timeout_s, tier, None) as response:
            yield response

    @contextlib.asynccontextmanager
    async def _open(
        self,
        deployment: Deployment,
        endpoint: str,
        body: dict[str, Any],
        timeout_s: float | None,
        tier: str | None,
        priority: int | None,
    ) -> AsyncIterator[httpx.Response]:
        if deployment.speaks_chat and endpoint == Endpoint.RESPONSES:
            async with self._open_translated(
                deployment, body, timeout_s, tier, priority
            ) as translated:
                yield translated
            return
        transport, request = self._request(deployment, endpoint, body, timeout_s, tier, priority)
        with _mapped_errors():
            response = await transport.handle_async_request(request)
        response.request = request
        try:
            yield response
        finally:
            await response.aclose()

    @contextlib.asynccontextmanager
    async def _open_translated(
        self,
        deployment: Deployment,
        body: dict[str, Any],
        timeout_s: float | None,
        tier: str | None,
        priority: int | None,
    ) -> AsyncIterator[httpx.Response]:
        try:
            chat = chat_request(body, deployment.token_field or "max_tokens")
        except Untranslatable as exc:
            raise untranslatable(exc) from None
        transport, request = self._request(
            deployment, Endpoint.CHAT, chat, timeout_s, tier, priority
        )
        with _mapped_errors():
            response = await transport.handle_async_request(request)
        response.request = request
        try:
            if response.status_code >= 400:
                yield response  # errors as the upstream sent them (callers normalize them)
            elif chat.get("stream"):
                yield translated_stream(response, body)
            else:
                content = await read_all(response)
                try:
                    translated = translated_reply(response, body, content)
                except BadChatAnswer as exc:
                    raise UpstreamError(exc.code, str(exc)) from None
                yield translated
        finally:
            await response.aclose()


def _content(
    deployment: Deployment,
    endpoint: str,
    body: dict[str, Any],
    host: str,
    tier: str | None = None,
    priority: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The request's body (at the provider's service ``tier`` and the engine's ``priority``,
    if given) and headers. The headers httpx would add for content=... (Host, Content-Length)
    are given at once: a request built from a stream skips httpx's header merging and body
    encoding. With tracing on, ``traceparent`` is the current span's."""
    content = dumpb(prepare_body(deployment, body, endpoint, tier, priority))
    headers = {
        "host": host,
        "content-length": str(len(content)),
        "content-type": "application/json",
        "accept": "*/*",
        **deployment.headers(),
    }
    if tracing.tracer is not None:  # the upstream's own spans join the call's trace
        traceparent = tracing.traceparent()
        if traceparent is not None:
            headers["traceparent"] = traceparent
    return content, headers


# How engines refuse a priority field they do not schedule by (vLLM V0: 400; SGLang: 503).
REFUSAL_STATUSES = (400, 503)


def _refused(deployment: Deployment, status: int, content: bytes) -> bool:
    """Whether an answer is the engine refusing the priority field: vLLM's V0 engine without
    ``--scheduling-policy priority`` (400 "Got priority 10 but Priority scheduling is not
    enabled."), SGLang with ``--abort-on-priority-when-disabled`` (503 "Using priority is
    disabled for this server. ..."). If so the deployment sends none for a while, and says
    why, once."""
    if status not in REFUSAL_STATUSES:
        return False
    text = content.lower()
    if b"priority" not in text or not (b"not enabled" in text or b"is disabled" in text):
        return False
    assert deployment.engine is not None  # only engines get a priority field
    if deployment.engine.refuse_priority(time.monotonic()):
        log.error(
            "deployment %s/%s refused the priority field (%s): start vLLM with"
            " --scheduling-policy priority (SGLang: --enable-priority-scheduling) or remove"
            " priority: from its config; its calls go without a priority meanwhile",
            deployment.model.name,
            deployment.name,
            content[:200].decode(errors="replace"),
        )
    return True


@functools.lru_cache(maxsize=1024)
def _target(raw: str) -> tuple[httpx.URL, str]:
    """The URL and its Host header, parsed once per upstream endpoint (httpx.URL parsing is
    costly per request)."""
    url = httpx.URL(raw)
    return url, url.netloc.decode("ascii")


@functools.lru_cache(maxsize=64)
def _timeout(timeout_s: float) -> dict[str, float | None]:
    """httpx's timeout extension for a model's ``timeout_s`` (read and the rest: all of it;
    connecting: at most 10 s). Shared between requests: read only."""
    return httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)).as_dict()


@contextlib.asynccontextmanager
async def within(timeout_s: float) -> AsyncIterator[None]:
    """The whole call, answer included, inside ``timeout_s``.

    httpx's and aiohttp's read timeouts bound each wait for a chunk, so a provider that
    trickles its answer would never time out; this bounds the total.
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise UpstreamError(
            ErrorCode.UPSTREAM_TIMEOUT,
            f"upstream timed out: no whole answer within {timeout_s:g} s",
        ) from None


async def read_all(response: httpx.Response) -> bytes:
    """The rest of the answer, transport failures mapped to ``UpstreamError``."""
    with _mapped_errors():
        return await response.aread()


async def iter_bytes(response: httpx.Response) -> AsyncIterator[bytes]:
    """The answer's bytes as they arrive, transport failures mapped to ``UpstreamError``."""
    with _mapped_errors():
        async for chunk in response.aiter_bytes():
            yield chunk


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """httpx transport errors as retryable ``UpstreamError``s whose messages name no address
    (see ``reasons.py``)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamError(
            ErrorCode.UPSTREAM_TIMEOUT, f"upstream timed out: {reason(exc)}"
        ) from exc
    except httpx.ConnectError as exc:  # the request never reached the provider
        raise UpstreamError(
            ErrorCode.UPSTREAM_UNREACHABLE, f"cannot reach the upstream: {reason(exc)}"
        ) from exc
    except httpx.HTTPError as exc:  # it may have: the provider may have done (and billed) it
        raise UpstreamError(
            ErrorCode.UPSTREAM_CONNECTION_BROKEN,
            f"upstream connection broke: {reason(exc)}",
        ) from exc


def build_upstream(settings: Settings) -> UpstreamClient:
    """The client for these settings; the in-process mock provider only if a model uses it."""
    uses_mock = any(
        d.upstream == MOCK_UPSTREAM for m in settings.models.values() for d in m.deployments
    )
    mock_app = None
    if uses_mock:  # loaded only where a model uses it
        from app.mock.server import create_mock_app

        mock_app = create_mock_app()
    return UpstreamClient(
        mock_app=mock_app,
        transport=settings.limits.upstream_transport,
    )
