"""An API key as every layer sees it: who calls, which models, which limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from app.vocabulary import BudgetPeriod


@dataclass(frozen=True)
class KeyLimits:
    """A key's rate limits (None: none) and budget (USD per period; None: none)."""

    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    budget_period: BudgetPeriod | None = None

    @property
    def rated(self) -> bool:
        return self.rpm is not None or self.tpm is not None


NO_LIMITS = KeyLimits()


@dataclass(frozen=True)
class ApiKey:
    """The authenticated caller."""

    id: str
    name: str
    models: tuple[str, ...] | None
    is_admin: bool = False  # may read the organization usage and costs of every key
    limits: KeyLimits = field(default_factory=lambda: NO_LIMITS)
    cache_enabled: bool = True  # False: the response cache is skipped for every call

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models
