"""Batch API work for benchmarks: chat lines as JSONL, uploaded and submitted over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import httpx


def chat_lines(lines: int, model: str, tag: str = "line") -> bytes:
    """``lines`` chat-completion lines for ``model``, custom ids ``{tag}-{n}``."""
    out = io.StringIO()
    for i in range(lines):
        body = {"model": model, "messages": [{"role": "user", "content": f"{tag} {i}"}]}
        line = {"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions"}
        out.write(json.dumps({**line, "body": body}) + "\n")
    return out.getvalue().encode()


async def upload(http: httpx.AsyncClient, content: bytes, name: str = "input.jsonl") -> str:
    """Upload batch input (``http`` is based at the API's /v1 with a key); its file id."""
    uploaded = await http.post("/files", data={"purpose": "batch"}, files={"file": (name, content)})
    uploaded.raise_for_status()
    return str(uploaded.json()["id"])


async def create_batch(
    http: httpx.AsyncClient, file_id: str, endpoint: str = "/v1/chat/completions"
) -> dict[str, Any]:
    """A 24h batch of the uploaded file; the Batch object as created."""
    created = await http.post(
        "/batches",
        json={"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"},
    )
    created.raise_for_status()
    batch: dict[str, Any] = created.json()
    return batch


async def timed_chat_batch(
    api: str, key: str, lines: int, model: str, *, poll_s: float = 0.2
) -> float:
    """Seconds from a ``lines``-line chat batch going ``in_progress`` to ``completed`` (every
    line must complete)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api, timeout=60, headers=headers) as http:
        batch = await create_batch(http, await upload(http, chat_lines(lines, model), "b.jsonl"))
        started = None
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(poll_s)
            batch = (await http.get(f"/batches/{batch['id']}")).json()
            if started is None and batch["status"] == "in_progress":
                started = time.perf_counter()
        assert batch["status"] == "completed", batch
        assert batch["request_counts"]["completed"] == lines, batch["request_counts"]
        return time.perf_counter() - (started or time.perf_counter())
