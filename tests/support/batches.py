"""Batch API inputs for tests: JSONL lines, uploaded through the ``openai`` SDK."""

from __future__ import annotations

import io
import json
from typing import Any

import openai


def chat_line(custom_id: str, text: str, model: str = "remote") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def responses_line(custom_id: str, text: str, model: str = "remote") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": model, "input": text},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client: openai.OpenAI, content: bytes, name: str = "input.jsonl") -> str:
    """Upload batch input; returns the file id."""
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch").id


def start_batch(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    """Upload ``lines`` and create a 24h batch on their endpoint."""
    return client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint=lines[0]["url"],
        completion_window="24h",
    )
