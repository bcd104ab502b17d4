"""Bearer-key authentication for every ``/v1`` route (pure ASGI middleware).

Keys are looked up by sha256 hash and cached in-process. A revocation NOTIFYs every gateway,
which drops the key at once; the TTL is only a safety net for a missed notification.
Concurrent requests with a key that is not cached (a cold start, an expired entry) share one
lookup, so a burst of clients costs one query, not one pool connection each.
"""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app import tracing
from app.keys import ApiKey
from app.openai.errors import unauthorized
from app.store.keys import KeyStore, hash_key

CACHE_TTL_S = 30.0
CACHE_MAX = 10_000


class KeyCache:
    """Authenticated keys by secret hash, invalidated by key id."""

    def __init__(self, store: KeyStore, ttl_s: float = CACHE_TTL_S) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._by_hash: dict[str, tuple[ApiKey, float]] = {}
        self._lookups: dict[str, asyncio.Future[ApiKey | None]] = {}

    async def authenticate(self, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        hit = self._by_hash.get(digest)
        if hit is not None and time.monotonic() - hit[1] < self._ttl_s:
            return hit[0]
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(secret, digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(digest, None))
        # Shielded: a client that leaves must not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    async def _lookup(self, secret: str, digest: str) -> ApiKey | None:
        now = time.monotonic()
        key = await self._store.find(secret)
        if key is None:
            self._by_hash.pop(digest, None)
            return None
        if len(self._by_hash) >= CACHE_MAX:
            self._by_hash.clear()
        self._by_hash[digest] = (key, now)
        return key

    def revoke(self, key_id: str) -> None:
        for digest in [d for d, (k, _) in self._by_hash.items() if k.id == key_id]:
            del self._by_hash[digest]

    def clear(self) -> None:
        self._by_hash.clear()


def bearer(headers: Headers) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class AuthMiddleware:
    """Rejects ``/v1`` calls without a valid key; puts the key in ``scope["state"]``."""

    def __init__(self, app: ASGIApp, *, keys: KeyCache, prefix: str = "/v1") -> None:
        self.app = app
        self.keys = keys
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        secret = bearer(Headers(scope=scope))
        if secret is None:
            raise unauthorized("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
        key = await self.keys.authenticate(secret)
        if tracing.tracer is not None:
            _auth_event(key)
        if key is None:
            raise unauthorized()
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


def _auth_event(key: ApiKey | None) -> None:
    """The key's name (never its secret) as an event on the server span: an event, not a
    span, as the lookup is nearly always a cache hit and a span costs its export."""
    tracing.event(
        "auth", {"tiergate.key.name": key.name if key else None, "tiergate.auth": bool(key)}
    )


def current_key(scope: Scope) -> ApiKey:
    key: ApiKey = scope["state"]["api_key"]
    return key
