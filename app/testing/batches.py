"""Batch API work for benchmarks: chat lines as JSONL, uploaded and submitted over HTTP."""

from __future__ import annotations

import io
import json
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
