"""Cost arithmetic: exact decimals, cached input at its own rate, tier multipliers,
deployment prices over the model's, unknown (None) when nothing is priced."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from app.calls.pricing import PriceBook
from app.config_file import ConfigError
from app.openai.usage import estimate_usage, measured
from app.settings import Settings
from app.token_usage import NO_USAGE, TokenUsage

CONFIG = {
    "models": [
        {
            "name": "big",
            "deployments": [
                {"name": "gpu-a", "upstream": "http://a/v1"},
                {
                    "name": "cheap",
                    "upstream": "http://b/v1",
                    "pricing": {"input_per_mtok": 1, "output_per_mtok": 2},
                },
            ],
            "pricing": {
                "input_per_mtok": 3.0,
                "output_per_mtok": 15.0,
                "cached_input_per_mtok": 0.3,
            },
        },
        {"name": "free", "upstream": "http://c/v1"},
    ],
    "limits": {"tier_price": {"flex": 0.5, "batch": 0.25}},
}


@pytest.fixture
def book() -> PriceBook:
    settings = Settings()
    settings.apply_config(CONFIG)
    return PriceBook(settings)


def test_cached_input_is_priced_at_its_own_rate(book: PriceBook):
    usage = TokenUsage(input=1000, output=500, total=1500, cached=400)
    # 600 x 3 + 400 x 0.3 + 500 x 15, per million tokens
    assert book.cost("big", "gpu-a", "default", usage) == Decimal("0.00942")


def test_tier_multipliers(book: PriceBook):
    usage = TokenUsage(input=1_000_000, output=1_000_000, total=2_000_000)
    assert book.cost("big", "gpu-a", "default", usage) == Decimal(18)
    assert book.cost("big", "gpu-a", "flex", usage) == Decimal(9)
    assert book.cost("big", "gpu-a", "batch", usage) == Decimal("4.5")


def test_a_deployment_price_overrides_the_model_price(book: PriceBook):
    usage = TokenUsage(input=2_000_000, output=1_000_000, total=3_000_000, cached=1_000_000)
    # no cached rate on the deployment: cached input pays the input rate
    assert book.cost("big", "cheap", "default", usage) == Decimal(4)


def test_a_fallback_is_priced_as_the_model_that_answered():
    settings = Settings()
    config = {
        "models": [
            {
                "name": "a",
                "upstream": "http://a/v1",
                "fallbacks": ["b"],
                "pricing": {"input_per_mtok": 10, "output_per_mtok": 10},
            },
            {
                "name": "b",
                "upstream": "http://b/v1",
                "pricing": {"input_per_mtok": 1, "output_per_mtok": 1},
            },
        ]
    }
    settings.apply_config(config)
    usage = TokenUsage(input=1_000_000, output=0, total=1_000_000)
    assert PriceBook(settings).cost("a", "b/default", "default", usage) == Decimal(1)
    assert PriceBook(settings).cost("a", "default", "default", usage) == Decimal(10)


def test_unpriced_or_unknown_is_none_not_zero(book: PriceBook):
    assert book.cost("free", "default", "default", TokenUsage(1, 1, 2)) is None
    assert book.cost("big", "gpu-a", "default", NO_USAGE) is None
    assert book.cost("gone", None, "default", TokenUsage(1, 1, 2)) is None


def test_many_calls_sum_exactly(book: PriceBook):
    usage = TokenUsage(input=123, output=45, total=168, cached=7)
    one = book.cost("big", "gpu-a", "flex", usage)
    assert one is not None
    total = sum((one for _ in range(100_000)), Decimal(0))
    assert total == one * 100_000  # no float drift


def test_estimate_is_a_quarter_of_the_characters():
    request = {"instructions": "abcd", "input": [{"role": "user", "content": "x" * 10}]}
    response = {
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "y" * 9}]}]
    }
    usage = estimate_usage(request, response)
    assert usage == TokenUsage(input=4, output=3, total=7, cached=0, estimated=True)
    chat = measured({"messages": [{"role": "user", "content": "hello"}]}, {"choices": []})
    assert chat.estimated and chat.input == 2 and chat.output == 0
    ids = estimate_usage({"input": [[1, 2, 3], [4]]}, None)
    assert ids.input == 4
    reported = measured({}, {"usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}})
    assert not reported.estimated


PRICED = """\
models:
  - name: big
    upstream: http://a/v1
    pricing:
      input_per_mtok: {input}
      output_per_mtok: 15
limits:
  tier_price: {{flex: {flex}}}
"""


@pytest.mark.parametrize(
    ("values", "line", "words"),
    [
        ({"input": "-1"}, 5, "greater than or equal to 0"),
        ({"input": "lots"}, 5, "decimal"),
        ({"input": ".nan"}, 5, "pricing.input_per_mtok"),
        ({"flex": "-0.5"}, 8, "tier_price.flex"),
        ({"flex": "cheap"}, 8, "decimal"),
    ],
)
def test_bad_prices_name_their_line(tmp_path: Path, values: dict[str, str], line: int, words: str):
    fields = {"input": "3", "flex": "0.5"} | values
    path = tmp_path / "tiergate.yaml"
    path.write_text(PRICED.format(**fields))
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TIERGATE_CONFIG": str(path)})
    message = str(caught.value)
    assert f"tiergate.yaml line {line}" in message and words in message, message
