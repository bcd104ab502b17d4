"""Why a connection to a provider failed, in words that name no host, address or port.

Transport exceptions quote the address they failed on: aiohttp's
``ClientConnectorError(ConnectionKey(host=..., port=...), ...)`` and ``Connection timeout to
host http://...``, asyncio's ``Connect call failed ('10.0.0.5', 8000)``. Clients and stored
rows get :func:`reason` instead; the exception itself stays in the server's logs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import httpx


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def reason(exc: BaseException) -> str:
    """A short, address-free account of a transport failure: ``connection refused``,
    ``name resolution failed (Name or service not known)``, ``timed out while connecting``,
    else the name of the innermost exception."""
    links = list(chain(exc))
    for link in links:
        if isinstance(link, socket.gaierror):  # gai_strerror's text names no host
            return f"name resolution failed ({link.strerror})"
        if isinstance(link, OSError) and isinstance(link.errno, int) and link.errno > 0:
            return os.strerror(link.errno).lower()  # not strerror: asyncio puts the address there
    if any(isinstance(link, httpx.ConnectTimeout) for link in links):
        return "timed out while connecting"
    if any(isinstance(link, TimeoutError | httpx.TimeoutException) for link in links):
        return "timed out waiting for data"
    return type(links[-1]).__name__
