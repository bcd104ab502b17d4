"""The tokens of one call: the value that usage parsing, pricing, metrics and rows share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one call (None: not reported). ``estimated``: counted by tiergate."""

    input: int | None = None
    output: int | None = None
    total: int | None = None
    cached: int | None = None
    reasoning: int | None = None
    estimated: bool = False

    @property
    def known(self) -> bool:
        """Whether any count is there (reported or estimated)."""
        return self.total is not None


NO_USAGE = TokenUsage()
