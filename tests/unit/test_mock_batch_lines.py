"""How the mock's batch jobs answer their lines (app/mock/batch_api.py), in process with the
``openai`` SDK: the realtime controls per line, a dropped answer, a chat-only server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
from openai.types import Batch

from app.mock.server import create_mock_app


def _clients(**kwargs: Any) -> tuple[openai.AsyncOpenAI, httpx.AsyncClient]:
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_mock_app(**kwargs)), base_url="http://mock"
    )
    client = openai.AsyncOpenAI(
        api_key="sk-mock", base_url="http://mock/v1", http_client=http, max_retries=0
    )
    return client, http


async def _run(client: openai.AsyncOpenAI, url: str, texts: list[str]) -> Batch:
    key = "input" if url == "/v1/responses" else "messages"
    lines = [
        {
            "custom_id": f"l{i}",
            "method": "POST",
            "url": url,
            "body": {"model": "m", key: [{"role": "user", "content": text}]},
        }
        for i, text in enumerate(texts)
    ]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    file = await client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id,
        endpoint=url,  # type: ignore[arg-type]
        completion_window="24h",
    )
    deadline = time.monotonic() + 10
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.01)
        batch = await client.batches.retrieve(batch.id)
    return batch


async def _lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    text = (await client.files.content(file_id)).text
    return [json.loads(line) for line in text.splitlines()]


async def test_fail_times_and_key_apply_per_line() -> None:
    client, http = _clients()
    texts = ["mock:fail_times=1,key=k,status=503 a", "mock:fail_times=1,key=k,status=503 b"]
    batch = await _run(client, "/v1/chat/completions", texts)
    [failed] = await _lines(client, batch.error_file_id)
    assert failed["custom_id"] == "l0" and failed["response"]["status_code"] == 503
    attempts = (await http.get("/_mock/attempts/k")).json()["attempts"]
    assert [a["path"] for a in attempts] == ["BATCH /v1/chat/completions"] * 2
    assert [a["status"] for a in attempts] == [503, 200]


async def test_a_dropped_answer_is_a_500_line() -> None:
    client, _ = _clients()
    batch = await _run(client, "/v1/chat/completions", ["mock:drop=1 hi"])
    [failed] = await _lines(client, batch.error_file_id)
    assert failed["response"]["status_code"] == 500
    assert "drop=1" in failed["response"]["body"]["error"]["message"]


async def test_a_chat_only_server_answers_responses_lines_404() -> None:
    client, http = _clients(api="chat")
    batch = await _run(client, "/v1/responses", ["hi"])
    [failed] = await _lines(client, batch.error_file_id)
    assert failed["response"] == {**failed["response"], "status_code": 404}
    assert failed["response"]["body"] == {"detail": "Not Found"}
    assert (await http.get("/_mock/stats")).json()["BATCH /v1/responses"] == 1
