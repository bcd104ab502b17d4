"""Bad input gets a clear OpenAI-format 4xx: never a 500, never a hang."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import openai
import psycopg
import pytest

from app.testing.processes import Gateway


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
    ("/responses", b'{"model": "mock", "input": "x", "service_tier": {}}', 400, "service_tier"),
    (
        "/responses",
        b'{"model": "mock", "input": "x", "service_tier": ["flex"]}',
        400,
        "service_tier",
    ),
    ("/responses", b'{"model": "mock", "input": "x", "temperature": NaN}', 400, None),
    ("/responses", b'{"model": "mock", "input": "\\udc00"}', 400, None),
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


def chunked(body: bytes, size: int = 16_384) -> Iterator[bytes]:
    """The body as a stream: sent chunked, without a Content-Length to refuse it by."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("path", ["/responses", "/chat/completions", "/embeddings", "/batches"])
def test_oversized_streamed_body_is_413(http: httpx.Client, path: str):
    huge = b'{"model": "mock", "input": "' + b"x" * 70_000 + b'"}'
    response = http.post(path, content=chunked(huge))
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


def status_before_the_end(gateway: Gateway, key: str, path: str, head: bytes, size: int) -> bytes:
    """POST a chunked body of which only ``head`` and ``size`` more bytes are ever sent, and
    return the status line the gateway answers with (a gateway waiting for the end times out)."""
    with socket.create_connection(("127.0.0.1", httpx.URL(gateway.url).port), timeout=10) as sock:
        content_type = b"application/json"
        if path == "/files":
            content_type = b"multipart/form-data; boundary=" + BOUNDARY
        sock.sendall(
            b"POST /v1" + path.encode() + b" HTTP/1.1\r\nHost: tiergate\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Type: " + content_type + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for chunk in chunked(head + b"x" * size, 64 * 1024):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        return sock.recv(4096).split(b"\r\n", 1)[0]


BOUNDARY = b"b0undary"
MULTIPART_HEAD = (
    b'--b0undary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def test_oversized_streams_are_refused_before_they_end(
    gateway: Gateway, key: str, db: psycopg.Connection
):
    """413 as soon as a limit is passed: the rest is neither awaited nor spooled to disk."""
    json_head = b'{"model": "mock", "input": "'
    assert status_before_the_end(gateway, key, "/responses", json_head, 70_000).startswith(
        b"HTTP/1.1 413"
    )
    files_before = db.execute("SELECT count(*) FROM files").fetchone()
    status = status_before_the_end(gateway, key, "/files", MULTIPART_HEAD, 5_200_000)
    assert status.startswith(b"HTTP/1.1 413")  # the limit here is 5,000,000 bytes
    assert db.execute("SELECT count(*) FROM files").fetchone() == files_before


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"no boundary"),
        ("multipart/form-data; boundary=x", b"--x\r\nnot a part"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\n"),
    ],
)
def test_malformed_upload_is_an_openai_400(http: httpx.Client, content_type: str, body: bytes):
    response = http.post("/files", content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("limit", ["\u00b2", "9" * 5000, "-1", "0", "1.5", "abc", ""])
@pytest.mark.parametrize("path", ["/files", "/batches"])
def test_bad_list_limits_are_400(http: httpx.Client, path: str, limit: str):
    response = http.get(path, params={"limit": limit})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "limit"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            b'{"input_file_id": "file-x", "endpoint": "/v1/responses", "completion_window": {}}',
            "completion_window",
        ),
        (b'{"input_file_id": "file-x", "endpoint": {}, "completion_window": "24h"}', "endpoint"),
        (
            b'{"input_file_id": ["x"], "endpoint": "/v1/responses", "completion_window": "24h"}',
            "input_file_id",
        ),
        (b"[1]", None),
        (b"", None),
    ],
)
def test_bad_batch_bodies_are_400(http: httpx.Client, body: bytes, param: str | None):
    response = http.post("/batches", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_deeply_nested_json_is_400(http: httpx.Client):
    nested = b'{"model": "mock", "input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    response = http.post("/responses", content=nested)
    assert response.status_code == 400
    assert "nested" in response.json()["error"]["message"]


def test_unknown_route_and_method(http: httpx.Client):
    assert http.get("/nothing-here").status_code == 404
    assert http.get("/nothing-here").json()["error"]["code"] == "unknown_url"
    response = http.put("/responses/resp_x")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}


def test_sdk_sees_bad_request_not_server_error(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="mock", input="x", service_tier="turbo")  # type: ignore[arg-type]
    assert "service_tier" in info.value.message
