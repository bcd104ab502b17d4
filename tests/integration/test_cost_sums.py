"""A million calls' costs, summed in SQL, equal the hand calculation to the cent (and
exactly): costs are NUMERIC, computed with decimals, never floats."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from sqlalchemy import text

from app.calls.pricing import PriceBook
from app.keys import ApiKey
from app.settings import Settings
from app.store.usage import summary
from app.token_usage import TokenUsage

ROWS = 1_000_000
PATTERNS = 997  # distinct usages, row g uses pattern g % PATTERNS
PRICING = {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "cached_input_per_mtok": 0.3}

INSERT = text(
    """
INSERT INTO requests (id, owner_key_id, endpoint, model, service_tier, status, body,
                      input_tokens, cached_tokens, output_tokens, total_tokens, cost_usd,
                      finished_at)
SELECT 'syn_' || g, :owner, '/v1/responses', 'priced', 'flex', 'completed', '{}',
       p.input, p.cached, p.output, p.input + p.output, p.cost, now()
FROM generate_series(1, :rows) AS g
JOIN unnest(CAST(:inputs AS int[]), CAST(:cached AS int[]), CAST(:outputs AS int[]),
            CAST(:costs AS numeric[])) WITH ORDINALITY AS p(input, cached, output, cost, n)
  ON p.n = g % :patterns + 1
"""
)


def pattern(i: int) -> TokenUsage:
    given = 1 + (i * 7919) % 6000
    output = (i * 104729) % 3000
    return TokenUsage(input=given, output=output, total=given + output, cached=(i * 31) % given)


async def test_a_million_costs_sum_to_the_cent(engine, owner: ApiKey):
    settings = Settings()
    settings.apply_config({"models": [{"name": "priced", "upstream": "http://x/v1",
                                       "pricing": PRICING}],
                           "limits": {"tier_price": {"flex": 0.5}}})  # fmt: skip
    book = PriceBook(settings)
    usages = [pattern(i) for i in range(PATTERNS)]
    costs = [book.cost("priced", "default", "flex", u) for u in usages]
    async with engine.begin() as conn:
        await conn.execute(
            INSERT,
            {
                "owner": owner.id,
                "rows": ROWS,
                "patterns": PATTERNS,
                "inputs": [u.input for u in usages],
                "cached": [u.cached for u in usages],
                "outputs": [u.output for u in usages],
                "costs": costs,
            },
        )
    # The hand calculation: how many rows use each pattern, times its price, in fractions.
    uses = [ROWS // PATTERNS + (1 if 0 < i <= ROWS % PATTERNS else 0) for i in range(PATTERNS)]
    assert sum(uses) == ROWS
    rates = {"input": Fraction(3), "cached": Fraction(3, 10), "output": Fraction(15)}
    exact = Fraction(0)
    for n, u in zip(uses, usages, strict=True):
        assert u.input is not None and u.cached is not None and u.output is not None
        tokens = (u.input - u.cached) * rates["input"] + u.cached * rates["cached"]
        exact += n * (tokens + u.output * rates["output"]) / 1_000_000 / 2
    hand = Decimal(exact.numerator) / Decimal(exact.denominator)
    (report,) = await summary(engine, by="model")
    assert report.requests == ROWS and report.cost_usd is not None
    assert report.cost_usd == hand  # exactly, not only to the cent
    assert report.cost_usd.quantize(Decimal("0.01")) == hand.quantize(Decimal("0.01"))
    async with engine.connect() as conn:
        in_sql = (await conn.execute(text("SELECT sum(cost_usd) FROM requests"))).scalar_one()
    assert in_sql == hand
