"""``tiergate usage``: requests, tokens and cost of finished requests, grouped, as a table."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from decimal import Decimal
from typing import Any

from app.cli.database import cli_engine
from app.settings import Settings
from app.store.limits import LimitStore
from app.store.usage import UsageRow, summary

HEADERS = ("REQUESTS", "INPUT", "CACHED", "OUTPUT", "REASONING", "COST USD")


def parse_when(value: str, *, end: bool = False) -> dt.datetime:
    """A date (``2026-12-01``: that day's start, or with ``end`` the next day's) or an ISO
    date and time (UTC unless it says otherwise)."""
    try:
        if len(value) == 10:
            day = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
            return day + dt.timedelta(days=1) if end else day
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (2026-12-01) or a date and time (2026-12-01T08:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def cost_text(cost: Decimal | None, unpriced: int) -> str:
    """A cost to the cent's hundredth; ``-`` when nothing was priced, ``+?`` when some was not."""
    if cost is None:
        return "-"
    shown = f"{cost.quantize(Decimal('0.0001'))}"
    return shown + ("+?" if unpriced else "")


def table(rows: list[UsageRow], by: str) -> str:
    """The report as aligned text, with a total line."""
    lines: list[tuple[str, ...]] = [(by.upper(), *HEADERS)]
    total = {"requests": 0, "input": 0, "cached": 0, "output": 0, "reasoning": 0, "unpriced": 0}
    cost: Decimal | None = None
    for row in rows:
        lines.append(_line(row.group, row, row.cost_usd, row.unpriced))
        total["requests"] += row.requests
        total["input"] += row.input_tokens
        total["cached"] += row.cached_tokens
        total["output"] += row.output_tokens
        total["reasoning"] += row.reasoning_tokens
        total["unpriced"] += row.unpriced
        if row.cost_usd is not None:
            cost = (cost or Decimal(0)) + row.cost_usd
    totals = UsageRow("TOTAL", total["requests"], total["input"], total["cached"],
                      total["output"], total["reasoning"], cost, 0, total["unpriced"])  # fmt: skip
    lines.append(_line("TOTAL", totals, cost, total["unpriced"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells))
    estimated = sum(row.estimated for row in rows)
    if estimated:
        out.append(f"({estimated} request(s) with usage estimated by tiergate)")
    if total["unpriced"]:
        out.append(f"(+?: {total['unpriced']} request(s) of models without a price)")
    return "\n".join(out)


def _line(name: str, row: UsageRow, cost: Decimal | None, unpriced: int) -> tuple[str, ...]:
    numbers: list[Any] = [row.requests, row.input_tokens, row.cached_tokens, row.output_tokens]
    numbers.append(row.reasoning_tokens)
    return (name, *(f"{n:,}" for n in numbers), cost_text(cost, unpriced))


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    if args.since and args.until and args.until <= args.since:
        print("tiergate: --until must be after --since", file=sys.stderr)
        return 2

    async def main() -> tuple[list[UsageRow], list[dict[str, Any]]]:
        async with cli_engine(settings) as engine:
            rows = await summary(
                engine, by=args.by, key=args.key, since=args.since, until=args.until
            )
            return rows, await LimitStore(engine).budgets()

    rows, budgets = asyncio.run(main())
    print(table(rows, args.by))
    for b in budgets:
        if args.key in (None, b["key_name"], b["key_id"]):
            print(
                f"budget of {b['key_name']}: {b['budget_usd']} USD per {b['budget_period']}"
                f" (since {b['period_start']}): spent {b['spent_usd']:.4f},"
                f" remaining {b['remaining_usd']:.4f}"
            )
    return 0


def add_parser(sub: Any) -> None:
    """Add ``usage`` to the ``tiergate`` parser's subcommands."""
    usage = sub.add_parser(
        "usage", help="requests, tokens and cost of finished requests (by finish time, UTC)"
    )
    usage.add_argument("--key", default=None, help="only this key's requests (its name)")
    usage.add_argument("--since", type=parse_when, default=None, help="from this date or time")
    usage.add_argument(
        "--until",
        type=lambda v: parse_when(v, end=True),
        default=None,
        help="up to this date (included) or time (excluded)",
    )
    usage.add_argument(
        "--by",
        choices=("model", "tier", "day", "key", "executor"),
        default="model",
        help="executor: the path each request ran on (direct, flex, batch; cache, realtime, none)",
    )
    usage.set_defaults(func=cmd_usage)
