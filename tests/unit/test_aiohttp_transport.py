"""The aiohttp transport under httpx: streaming arrives incrementally, failures map to httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from app.testing.processes import free_port
from app.upstream.aiohttp_transport import AiohttpTransport


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"got": await request.json(), "auth": request.headers.get("authorization")})


async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(2)
    return JSONResponse({})


release = asyncio.Event()


async def stream(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await release.wait()
        yield b"data: second\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/slow", slow),
            Route("/stream", stream),
        ]
    )
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    while not instance.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    await task


async def test_json_round_trip_and_headers(server: str):
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.post(
            server + "/echo", json={"a": 1}, headers={"authorization": "Bearer x"}
        )
    assert response.json() == {"got": {"a": 1}, "auth": "Bearer x"}


async def test_stream_chunks_arrive_before_the_body_ends(server: str):
    release.clear()
    async with (
        httpx.AsyncClient(transport=AiohttpTransport()) as client,
        client.stream("GET", server + "/stream") as response,
    ):
        chunks = response.aiter_bytes()
        assert await anext(chunks) == b"data: first\n\n"  # while the server still holds
        release.set()
        assert b"".join([c async for c in chunks]) == b"data: second\n\n"


async def test_read_timeout_and_refused_connection_map_to_httpx_errors(server: str):
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.get(server + "/slow", timeout=httpx.Timeout(0.2))
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{free_port()}/")


async def test_whole_answers_skip_httpx_and_map_failures_alike(server: str):
    transport = AiohttpTransport()
    timeout = httpx.Timeout(0.2).as_dict()
    try:
        answer = await transport.whole(
            server + "/echo",
            {"content-type": "application/json", "authorization": "Bearer x"},
            b'{"a": 1}',
            timeout,
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert "content-length" not in answer.headers  # the wire's, not the body's
        assert json.loads(answer.content) == {"got": {"a": 1}, "auth": "Bearer x"}
        with pytest.raises(httpx.ConnectError):
            await transport.whole(f"http://127.0.0.1:{free_port()}/", {}, b"", timeout)
    finally:
        await transport.aclose()
