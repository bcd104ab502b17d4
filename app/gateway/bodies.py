"""Request bodies: size limits, a read deadline, and a byte budget for the large ones held at once.

A 7 MB JSON array of numbers costs a few hundred MB while it is parsed, checked and stored, so
the number of clients must not decide how much memory the gateway uses. Each inference call
whose body is large takes its declared size from the budget before a byte of the body is read,
and gives it back as soon as nothing refers to the body any more. Calls that do not fit wait
their turn, first come first served, for at most ``wait_s``; the bytes they have not sent yet
stay in the kernel meanwhile (uvicorn stops reading a connection whose body is not consumed).
Small bodies never wait: their cost is bounded by the connection count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from starlette.datastructures import Headers
from starlette.types import Receive

from app.openai.errors import APIError
from app.vocabulary import RequestErrorCode

# Bodies up to this size skip the budget: a few KB of chat is the common case.
SMALL_BODY_BYTES = 64 * 1024


class Hold:
    """Bytes taken from a budget; ``release`` gives them back (once, however often called)."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def release(self) -> None:
        size, self.size = self.size, 0
        if size:
            self._budget._give_back(size)


class ByteBudget:
    """A first-come-first-served semaphore counted in bytes."""

    def __init__(self, capacity: int, *, wait_s: float) -> None:
        self.capacity = capacity
        self.available = capacity
        self.wait_s = wait_s
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def in_use(self) -> int:
        return self.capacity - self.available

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def cost(self, declared: int | None, limit: int) -> int:
        """What a body of ``declared`` bytes takes (a body of unknown size may reach ``limit``)."""
        if declared is None:
            return min(limit, self.capacity)
        return 0 if declared <= SMALL_BODY_BYTES else min(declared, self.capacity)

    async def take(self, size: int) -> Hold:
        """``size`` bytes, once they are free; 503 if they are not within ``wait_s``."""
        if size == 0:
            return Hold(self, 0)
        if not self._waiters and self.available >= size:
            self.available -= size
            return Hold(self, size)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self._give_back(size)  # granted just as we gave up
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()  # a smaller waiter behind us may fit now
            if isinstance(exc, TimeoutError):
                raise APIError(
                    503,
                    f"The gateway is busy with other large requests (over {self.capacity} bytes"
                    f" of request bodies in flight); retry shortly.",
                    type="server_error",
                    code=RequestErrorCode.SERVER_BUSY,
                    headers={"retry-after": "1"},
                ) from None
            raise
        return Hold(self, size)

    def _give_back(self, size: int) -> None:
        self.available += size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.available:
            size, granted = self._waiters.popleft()
            if granted.done():  # cancelled meanwhile
                continue
            self.available -= size
            granted.set_result(None)


def declared_size(headers: Headers, limit: int) -> int | None:
    """The body size the client announced (None if it did not); 413 if over ``limit``."""
    declared = headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise _too_big(limit)
    return int(declared)


def _too_big(limit: int) -> APIError:
    return APIError(
        413,
        f"The request body exceeds the limit of {limit} bytes.",
        code=RequestErrorCode.REQUEST_TOO_LARGE,
    )


async def read_body(receive: Receive, headers: Headers, limit: int, timeout_s: float) -> bytearray:
    """The whole request body; 413 as soon as it exceeds ``limit`` bytes, 408 if the client
    takes longer than ``timeout_s`` to send it (a trickle must not hold its share for ever)."""
    declared_size(headers, limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise APIError(400, "The client disconnected while sending the body.")
                body += message.get("body", b"")
                if len(body) > limit:
                    raise _too_big(limit)
                if not message.get("more_body", False):
                    return body
    except TimeoutError:
        raise APIError(
            408,
            f"The request body did not arrive within {timeout_s:g} s.",
            code=RequestErrorCode.REQUEST_TIMEOUT,
            headers={"connection": "close"},
        ) from None
