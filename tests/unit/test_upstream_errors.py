"""Upstream failures as clients see them: error bodies in OpenAI's shape whatever the provider
sent, transport failures described without the provider's address."""

from __future__ import annotations

import itertools
import json
import socket

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey

from app.calls.policy import rule_for
from app.openai.upstream_errors import MAX_MESSAGE_CHARS, normalize_error
from app.settings import HealthLimits, ModelConfig
from app.testing.processes import free_port
from app.upstream.client import UpstreamClient, UpstreamError, error_from_status
from app.upstream.deployment import Deployment
from app.upstream.reasons import reason

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

SHAPES = [
    # name, status, content, content type, message, type, code
    ("llama-cpp", 404, b'{"detail":"Not Found"}', "application/json", "Not Found", None, None),
    (
        "fastapi-validation",
        422,
        json.dumps(
            {"detail": [{"loc": ["body", "messages"], "msg": "field required", "type": "x"}]}
        ).encode(),
        "application/json",
        "body.messages: field required",
        "invalid_request_error",
        None,
    ),
    ("text", 503, b"upstream overloaded\n", "text/plain", "upstream overloaded", None, None),
    ("html", 502, NGINX_502, "text/html", "502 Bad Gateway nginx", None, None),
    (
        "tgi",
        424,
        b'{"error":"Request failed","error_type":"x"}',
        None,
        "Request failed",
        None,
        None,
    ),
    (
        "vllm-top-level",
        400,
        b'{"object":"error","message":"too long","type":"BadRequestError","code":400}',
        "application/json",
        "too long",
        "BadRequestError",
        None,  # not a string: dropped
    ),
    (
        "openai-partial",
        429,
        b'{"error":{"message":"slow down"}}',
        "application/json",
        "slow down",
        "rate_limit_error",
        None,
    ),
    ("empty", 500, b"", None, "The upstream answered HTTP 500 Internal Server Error.", None, None),
    ("json-list", 500, b"[1,2]", "application/json", "[1,2]", None, None),
]


@pytest.mark.parametrize(
    ("name", "status", "content", "content_type", "message", "type", "code"),
    SHAPES,
    ids=[s[0] for s in SHAPES],
)
def test_error_bodies_take_openai_shape(
    name: str,
    status: int,
    content: bytes,
    content_type: str | None,
    message: str,
    type: str | None,
    code: str | None,
):
    body = normalize_error(status, content, content_type)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == message
    expected_type = type or ("server_error" if status >= 500 else "invalid_request_error")
    assert body["error"]["type"] == expected_type
    assert body["error"]["code"] == code and body["error"]["param"] is None


def test_an_openai_error_body_is_kept_as_it_is():
    sent = {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}
    assert normalize_error(400, json.dumps(sent).encode()) == sent


def test_long_texts_are_cut_and_scripts_dropped():
    page = b"<html><script>var x = 1;</script><body>" + b"x" * 50_000 + b"</body></html>"
    message = normalize_error(500, page, "text/html")["error"]["message"]
    assert message == "x" * MAX_MESSAGE_CHARS


def test_error_from_status_stores_the_normalized_body():
    failure = error_from_status(404, httpx.Headers(), b'{"detail":"Not Found"}')
    assert (failure.code, failure.message, rule_for(failure).retryable) == (
        "upstream_404",
        "Not Found",
        False,
    )
    assert failure.body == normalize_error(404, b'{"detail":"Not Found"}')


def _chained(outer: BaseException, *inner: BaseException) -> BaseException:
    """``outer`` raised from ``inner[0]``, raised from ``inner[1]``, ..."""
    links = [outer, *inner]
    for link, cause in itertools.pairwise(links):
        link.__cause__ = cause
    return outer


KEY = ConnectionKey("10.0.0.5", 8000, False, True, None, None, None, None)  # type: ignore[arg-type]


def test_reasons_never_name_the_address():
    refused = ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 8000)")
    dns = socket.gaierror(-2, "Name or service not known")
    cases = {
        "connection refused": _chained(
            httpx.ConnectError("x"), aiohttp.ClientConnectorError(KEY, refused), refused
        ),
        "name resolution failed (Name or service not known)": _chained(
            httpx.ConnectError("x"), aiohttp.ClientConnectorDNSError(KEY, dns), dns
        ),
        "timed out while connecting": _chained(
            httpx.ConnectTimeout("x"),
            aiohttp.ConnectionTimeoutError("Connection timeout to host http://10.0.0.5:8000/v1"),
        ),
        "timed out waiting for data": _chained(httpx.ReadTimeout("x"), TimeoutError()),
        "ServerDisconnectedError": _chained(
            httpx.RemoteProtocolError("x"), aiohttp.ServerDisconnectedError()
        ),
    }
    for expected, exc in cases.items():
        assert reason(exc) == expected
        assert "10.0.0.5" not in reason(exc) and "8000" not in reason(exc)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_closed_port_is_unreachable_without_its_address(transport: str):
    port = free_port()  # nothing listens there
    model = ModelConfig(name="m", upstream=f"http://127.0.0.1:{port}/v1", timeout_s=5)
    client = UpstreamClient(transport=transport)
    try:
        with pytest.raises(UpstreamError) as failed:
            deployment = Deployment.of(model, model.deployments[0], HealthLimits())
            await client.call(deployment, "/v1/chat/completions", {"messages": []})
    finally:
        await client.aclose()
    assert failed.value.code == "upstream_unreachable" and rule_for(failed.value).retryable
    text = str(failed.value)
    assert "127.0.0.1" not in text and str(port) not in text and "ConnectionKey" not in text
    assert text == "upstream_unreachable: cannot reach the upstream: connection refused"
