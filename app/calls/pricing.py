"""What a call cost, in exact decimals, from the configured prices and the tier multiplier.

cost = (uncached input x input rate + cached input x cached rate + output x output rate)
       / 1,000,000 x multiplier

The multiplier is the pricing tier's (``limits.tier_price``), unless the call ran on a
provider's flex tier or Batch API and the deployment's pricing names that path's multiplier
(``pricing: {flex: 0.5, batch: 0.5}``): a row is priced at the path it ran on.

Reasoning tokens are part of the output tokens (OpenAI counts them there) and are not added
again. No pricing configured for the model (or its deployment): the cost is unknown (None),
never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from app.settings import Pricing, Settings, TierPrice
from app.token_usage import TokenUsage
from app.vocabulary import ExecutorKind

MILLION = Decimal(1_000_000)
# The paths a provider prices apart (``pricing: {flex: ..., batch: ...}``).
PROVIDER_PATHS = (ExecutorKind.FLEX, ExecutorKind.BATCH)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token, the tier multiplier applied."""

    input: Decimal
    cached: Decimal
    output: Decimal

    def cost(self, usage: TokenUsage) -> Decimal | None:
        """The cost of ``usage`` (None if it has no counts)."""
        if not usage.known:
            return None
        given, cached = usage.input or 0, min(usage.cached or 0, usage.input or 0)
        return (
            (given - cached) * self.input + cached * self.cached + (usage.output or 0) * self.output
        )


def rates(pricing: Pricing, multiplier: Decimal) -> Rates:
    """Per-token rates of ``pricing`` times ``multiplier``."""
    cached = pricing.cached_input_per_mtok
    if cached is None:
        cached = pricing.input_per_mtok
    return Rates(
        input=pricing.input_per_mtok * multiplier / MILLION,
        cached=cached * multiplier / MILLION,
        output=pricing.output_per_mtok * multiplier / MILLION,
    )


def multiplier(tier_price: TierPrice, tier: str) -> Decimal:
    """The multiplier of a pricing tier (``default``, ``flex``, ``batch``; others 1)."""
    found = getattr(tier_price, tier, None) if tier in TierPrice.model_fields else None
    return found if isinstance(found, Decimal) else Decimal(1)


class PriceBook:
    """Rates by (model asked, deployment label, tier), computed once each and kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rates: dict[tuple[str, str | None, str, str | None], Rates | None] = {}

    def cost(
        self,
        model: str,
        deployment: str | None,
        tier: str,
        usage: TokenUsage,
        path: str | None = None,
    ) -> Decimal | None:
        """What ``usage`` cost on ``deployment`` (its label: ``gpu-a``, or ``small/gpu-a``
        when a fallback model answered) of ``model``, at ``tier``, run on ``path`` (an
        executor: ``flex`` or ``batch`` use the deployment's multiplier for them, if
        priced); None if not priced."""
        if not usage.known:
            return None
        key = (model, deployment, tier, path)
        try:
            found = self._rates[key]
        except KeyError:
            found = self._rates[key] = self._lookup(model, deployment, tier, path)
        return None if found is None else found.cost(usage)

    def _lookup(
        self, model: str, deployment: str | None, tier: str, path: str | None
    ) -> Rates | None:
        served, name = model, deployment
        asked = self.settings.models.get(model)
        if (
            deployment is not None
            and "/" in deployment
            and asked is not None
            and deployment not in {d.name for d in asked.deployments}
        ):
            served, name = deployment.split("/", 1)
        config = self.settings.models.get(served)
        if config is None:
            return None
        pricing = config.pricing
        for each in config.deployments:
            if each.name == name and each.pricing is not None:
                pricing = each.pricing
        if pricing is None:
            return None
        by_path = getattr(pricing, path, None) if path in PROVIDER_PATHS else None
        if isinstance(by_path, Decimal):
            return rates(pricing, by_path)
        return rates(pricing, multiplier(self.settings.limits.tier_price, tier))
