"""An httpx transport backed by aiohttp's client.

httpx stays the one client API every caller uses; only the wire work is aiohttp's. Measured
on 2 cores with the zero-latency mock (bench/core.py), httpcore's pool costs the gateway about
a third of its realtime throughput (it polls every idle connection on each request and goes
through anyio), which aiohttp does not. ``limits.upstream_transport: httpx`` switches back.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import httpx
from yarl import URL


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            # iter_any yields whatever arrived: server-sent events pass through at once.
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise httpx.ReadTimeout("upstream read timed out") from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError("upstream connection broke") from exc

    async def aclose(self) -> None:
        self._response.release()


# Idle pooled connections are closed after this long: under uvicorn's default 5 s keep-alive
# (vLLM, SGLang, llama-cpp-python's server), so a call never goes out on a connection the
# server is closing that very moment (seen as ClientConnectionResetError on the first
# write, an attempt lost to a retry).
KEEPALIVE_S = 4.0


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx's (frozen, so one per model's timeout is shared)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


# Headers that describe the bytes on the wire, not the (decompressed, whole) body handed on.
_WIRE_HEADERS = frozenset(("content-encoding", "content-length", "transfer-encoding"))


@dataclass(frozen=True, slots=True)
class Whole:
    """An answer read whole: its status, its headers (lower-case names, a repeated one's values
    joined by ``", "``, as ``httpx.Headers`` gives them) and its body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


def _headers_of(response: aiohttp.ClientResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in response.raw_headers:
        name = raw_name.decode("latin-1").lower()
        if name in _WIRE_HEADERS:
            continue
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


@functools.lru_cache(maxsize=1024)
def _url(raw: str) -> URL:
    """A provider's endpoint, parsed once (yarl's parsing is costly per request)."""
    return URL(raw)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Plain HTTP/1.1 over one aiohttp session with a bounded connection pool."""

    def __init__(self, *, max_connections: int = 512, keepalive_s: float = KEEPALIVE_S) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_s
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),  # providers' cookies mean nothing here
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            response = await self._get_session().request(
                request.method,
                str(request.url),
                headers=request.headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=_client_timeout(timeout.get("connect"), timeout.get("read")),
            )
        # aiohttp's texts quote the upstream's address: they stay in the chain (for logs),
        # not in the messages (see reasons.py).
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout("upstream connect timed out") from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout("upstream timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError("cannot reach upstream") from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError("upstream connection failed") from exc
        headers = [
            (k, v)
            for k, v in response.raw_headers
            if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")
        ]
        return httpx.Response(
            status_code=response.status, headers=headers, stream=_Body(response), request=request
        )

    async def whole(
        self,
        url: str,
        headers: Mapping[str, str],
        content: bytes,
        timeout: Mapping[str, float | None],
    ) -> Whole:
        """One POST whose answer is read whole, without httpx's request and response objects
        (the realtime proxy's and the workers' hot path). Failures are the httpx errors
        :meth:`handle_async_request` and a response's body raise, chained alike."""
        try:
            response = await self._get_session().request(
                "POST",
                _url(url),
                headers=headers,
                data=content,
                allow_redirects=False,
                timeout=_client_timeout(timeout.get("connect"), timeout.get("read")),
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout("upstream connect timed out") from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout("upstream timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError("cannot reach upstream") from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError("upstream connection failed") from exc
        try:
            body = await response.read()
        except TimeoutError as exc:
            raise httpx.ReadTimeout("upstream read timed out") from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError("upstream connection broke") from exc
        finally:
            response.release()
        return Whole(response.status, _headers_of(response), body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
