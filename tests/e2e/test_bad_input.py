"""Bad input gets a clear OpenAI-format 4xx: never a 500, never a hang."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.servers import Gateway


@pytest.fixture(scope="module")
def http(gateway: Gateway, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.api, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


CASES = [
    ("/responses", b'{"model": "mock", "input": ', 400, None),
    ("/responses", b"[1, 2, 3]", 400, None),
    ("/responses", b"", 400, None),
    ("/responses", b'{"input": "no model"}', 400, "model"),
    ("/responses", b'{"model": "mock"}', 400, "input"),
    ("/responses", b'{"model": 42, "input": "x"}', 400, "model"),
    (
        "/responses",
        b'{"model": "mock", "input": "x", "service_tier": "turbo"}',
        400,
        "service_tier",
    ),
    ("/responses", b'{"model": "mock", "input": "x", "background": "yes"}', 400, "background"),
    ("/responses", b'{"model": "mock", "input": "x", "metadata": {"k": 1}}', 400, "metadata"),
    ("/chat/completions", b'{"model": "mock"}', 400, "messages"),
    ("/chat/completions", b'{"model": "mock", "messages": ["hi"]}', 400, "messages"),
    (
        "/chat/completions",
        b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "background": true}',
        400,
        "background",
    ),
    ("/embeddings", b'{"model": "mock", "input": []}', 400, "input"),
    ("/embeddings", b'{"model": "mock", "input": "x", "stream": true}', 400, "stream"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), CASES)
def test_bad_bodies_get_openai_errors(
    http: httpx.Client, path: str, body: bytes, status: int, param: str | None
):
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_oversized_body_is_413(http: httpx.Client):
    huge = b'{"model": "mock", "input": "' + b"x" * 70_000 + b'"}'
    response = http.post("/responses", content=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_deeply_nested_json_is_400(http: httpx.Client):
    nested = b'{"model": "mock", "input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    response = http.post("/responses", content=nested)
    assert response.status_code == 400
    assert "nested" in response.json()["error"]["message"]


def test_unknown_route_and_method(http: httpx.Client):
    assert http.get("/nothing-here").status_code == 404
    assert http.get("/nothing-here").json()["error"]["code"] == "unknown_url"
    assert http.put("/responses/resp_x").status_code == 405


def test_sdk_sees_bad_request_not_server_error(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="mock", input="x", service_tier="turbo")  # type: ignore[arg-type]
    assert "service_tier" in info.value.message
