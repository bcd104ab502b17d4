"""Classification and validation of inference bodies (pure functions)."""

from __future__ import annotations

import json

import pytest

from app.openai.errors import APIError
from app.openai.validation import classify
from app.settings import Settings
from app.store.keys import ApiKey

ANY = ApiKey(id="key_1", name="a", models=None)
MOCK_ONLY = ApiKey(id="key_2", name="b", models=("mock",))


def call(endpoint: str, key: ApiKey = ANY, **body: object):
    return classify(endpoint, json.dumps(body).encode(), Settings(), key)


@pytest.mark.parametrize(
    ("body", "tier", "background", "deferred"),
    [
        ({}, "default", False, False),
        ({"service_tier": "auto"}, "default", False, False),
        ({"service_tier": "priority"}, "default", False, False),
        ({"service_tier": "flex"}, "flex", False, True),
        ({"background": True}, "default", True, True),
        ({"service_tier": "flex", "background": True}, "flex", True, True),
    ],
)
def test_tiers(body: dict, tier: str, background: bool, deferred: bool):
    result = call("/v1/responses", model="mock", input="x", **body)
    assert (result.tier, result.background, result.deferred) == (tier, background, deferred)


def test_errors_name_the_parameter():
    with pytest.raises(APIError) as info:
        call("/v1/chat/completions", model="mock", messages=[])
    assert (info.value.status, info.value.param) == (400, "messages")
    with pytest.raises(APIError) as info:
        call("/v1/responses", model="mock", input="x", stream=True, background=True)
    assert (info.value.status, info.value.param) == (400, "stream")
    flex = call("/v1/responses", model="mock", input="x", stream=True, service_tier="flex")
    assert flex.deferred and flex.stream


def test_model_access():
    with pytest.raises(APIError) as info:
        call("/v1/responses", model="nope", input="x")
    assert info.value.status == 404 and info.value.code == "model_not_found"
    settings = Settings()
    settings.apply_config({"models": [{"name": "big", "upstream": "http://x/v1"}]})
    with pytest.raises(APIError) as info:
        classify("/v1/responses", b'{"model": "big", "input": "x"}', settings, MOCK_ONLY)
    assert info.value.status == 403


def test_prompt_or_previous_response_replaces_input():
    assert call("/v1/responses", model="mock", previous_response_id="resp_1").tier == "default"


def test_metadata_limits():
    with pytest.raises(APIError):
        call("/v1/responses", model="mock", input="x", metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(APIError):
        call("/v1/responses", model="mock", input="x", metadata={"k" * 65: "v"})
    assert call("/v1/responses", model="mock", input="x", metadata={"k": "v" * 512})
