"""Embeddings of prompts for the semantic cache, from a tiergate model that serves them.

The call goes through the router like any other (health, balancing, fallbacks), bounded by
the semantic cache's ``timeout_s``; any failure is the caller's miss, never the client's
error.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from app.upstream.client import UpstreamClient
from app.upstream.router import Router
from app.vocabulary import CallClass, Endpoint


class EmbeddingFailed(Exception):
    """No embedding: the model failed, timed out or answered something unusable."""


class Embedder:
    """Embeds texts with the configured embeddings models."""

    def __init__(self, upstream: UpstreamClient, router: Router) -> None:
        self.upstream = upstream
        self.router = router

    async def embed(
        self, model: str, text: str, timeout_s: float, dimensions: int | None = None
    ) -> list[float]:
        """The embedding of ``text`` by ``model`` (of ``dimensions``, if set); raises
        ``EmbeddingFailed``."""
        body: dict[str, Any] = {"input": text}
        if dimensions is not None:
            body["dimensions"] = dimensions
        try:
            async with asyncio.timeout(timeout_s):
                deployment = await self.router.acquire(
                    model, deadline=self.router.clock() + timeout_s
                )
                if deployment is None:
                    raise EmbeddingFailed(f"no deployment of {model} can take the call")
                try:
                    reply = await self.upstream.call(
                        deployment,
                        Endpoint.EMBEDDINGS,
                        {**body, "model": deployment.target_model},
                        call=CallClass.REALTIME,
                    )
                except BaseException as exc:
                    self.router.end(deployment, fault=type(exc).__name__)
                    raise
                self.router.end(deployment)
        except EmbeddingFailed:
            raise
        except Exception as exc:  # timeouts, upstream errors, no capacity
            raise EmbeddingFailed(f"{model}: {type(exc).__name__}: {exc}") from exc
        return _vector(reply.body)


def _vector(body: Any) -> list[float]:
    try:
        data = body["data"][0]["embedding"]
        if isinstance(data, str):  # base64 floats, should a server insist
            raw = base64.b64decode(data)
            return list(struct.unpack(f"<{len(raw) // 4}f", raw))
        vector = [float(x) for x in data]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EmbeddingFailed(f"unusable embeddings answer: {exc}") from exc
    if not vector:
        raise EmbeddingFailed("empty embedding")
    return vector
