"""Webhooks without I/O: signatures the official SDK verifies, URL safety, the retry schedule,
the config section."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import time
from pathlib import Path

import openai
import pytest

from app.config_file import ConfigError
from app.openai.webhooks import event_body, new_secret, signed_headers
from app.settings import Settings, WebhooksConfig
from app.upstream.webhook_urls import Target, UnsafeUrl, check, parse, private
from worker.webhooks import backoff_s, schedule

SDK = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


def signed(secrets: list[str], at: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = event_body("evt_123", "response.completed", 1_700_000_000, "resp_abc")
    return body, signed_headers(secrets, "evt_123", at or int(time.time()), body)


def test_the_sdk_verifies_and_parses_an_event():
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body, headers = signed([secret])
    assert headers["webhook-signature"].startswith("v1,")
    event = SDK.webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "response.completed"
    assert event.id == "evt_123" and event.data.id == "resp_abc"
    assert event.created_at == 1_700_000_000 and event.object == "event"
    assert json.loads(body) == {
        "id": "evt_123",
        "object": "event",
        "type": "response.completed",
        "created_at": 1_700_000_000,
        "data": {"id": "resp_abc"},
    }
    SDK.webhooks.unwrap(body.decode(), headers, secret=secret)  # str payloads too


def test_a_wrong_secret_a_changed_body_or_an_old_timestamp_fail():
    secret = new_secret()
    body, headers = signed([secret])
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(body, headers, secret=new_secret())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(body.replace(b"resp_abc", b"resp_abd"), headers, secret=secret)
    old_body, old = signed([secret], at=int(time.time()) - 600)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(old_body, old, secret=secret)


def test_during_a_rotation_both_secrets_verify():
    new, old = new_secret(), new_secret()
    body, headers = signed([new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        SDK.webhooks.verify_signature(body, headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.verify_signature(body, headers, secret=new_secret())


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("example.com/hook", "only http and https"),
        ("http:///path", "no host"),
        ("https://user:pw@example.com/", "user name or password"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_bad_urls_are_refused(url: str, why: str):
    with pytest.raises(UnsafeUrl, match=why):
        parse(url)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_private_addresses(address: str):
    assert private(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str):
    assert not private(ipaddress.ip_address(address))


def test_check_refuses_private_hosts_unless_allowed():
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "https://[::1]/h"):
        with pytest.raises(UnsafeUrl, match="allow_private"):
            asyncio.run(check(url, allow_private=False))
        assert asyncio.run(check(url, allow_private=True)).address.is_loopback
    target = asyncio.run(check("https://8.8.8.8/hook?x=1", allow_private=False))
    assert target.host == "8.8.8.8"


def test_the_pinned_url_keeps_port_path_and_query():
    v4 = Target("https://hooks.example.com:8443/a/b?c=d", "hooks.example.com", parse_ip("1.2.3.4"))
    assert v4.pinned_url() == "https://1.2.3.4:8443/a/b?c=d"
    v6 = Target("http://hooks.example.com/a", "hooks.example.com", parse_ip("2001:db8::1"))
    assert v6.pinned_url() == "http://[2001:db8::1]/a"


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter():
    assert [backoff_s(n, 5, 3600, lambda: 1.0) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert backoff_s(30, 5, 3600, lambda: 1.0) == 3600
    assert backoff_s(10_000, 5, 3600, lambda: 1.0) == 3600  # no overflow
    assert backoff_s(1, 5, 3600, lambda: 0.0) == 3.75  # at most a quarter less


def test_the_default_schedule_retries_for_72_hours():
    times = schedule(WebhooksConfig())
    assert times[:4] == [5, 15, 35, 75]
    assert times[-1] <= 72 * 3600 < times[-1] + 3600
    assert len(times) == 80  # 10 doublings, then hourly


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiergate.yaml"
    path.write_text(text)
    return path


def test_the_webhooks_section(tmp_path: Path):
    path = write(tmp_path, "webhooks:\n  allow_private: true\n  timeout_s: 3\n")
    settings = Settings.from_env({"TIERGATE_CONFIG": str(path)})
    assert settings.webhooks.allow_private and settings.webhooks.timeout_s == 3
    assert not Settings().webhooks.allow_private  # safe by default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("webhooks:\n  allow_private: maybe\n", "line 2 (webhooks.allow_private)"),
        ("webhooks:\n  timeout_s: 0\n", "line 2 (webhooks.timeout_s)"),
        ("webhooks:\n  alow_private: true\n", "line 2 (webhooks.alow_private)"),
    ],
)
def test_mistakes_in_the_webhooks_section_name_their_line(tmp_path: Path, text: str, message: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"TIERGATE_CONFIG": str(path)})
    assert message in str(raised.value)
