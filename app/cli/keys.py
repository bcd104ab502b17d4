"""``tiergate keys``: create, update, list and revoke API keys (only hashes are stored)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from app.cli.database import with_store
from app.keys import ApiKey, KeyLimits
from app.settings import Settings
from app.store.keys import KeyNameTaken, KeyStore
from app.store.limits import LimitStore
from app.vocabulary import BudgetPeriod

CLEAR = "none"  # --rpm none, --budget-usd none: no limit, no budget (so is --rpm 0)

T = TypeVar("T")


def with_keys(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run ``work`` on a KeyStore of the configured database, then close it."""
    return with_store(settings, KeyStore, work)


def positive_weight(value: str) -> float:
    """A ``--weight``: a finite number above 0."""
    try:
        weight = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (0 < weight < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number above 0: {value!r}")
    return weight


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    unknown = [m for m in models or [] if m not in settings.models]
    if unknown:
        print(f"warning: not configured here: {', '.join(unknown)}", file=sys.stderr)
    if args.budget_period is not None and args.budget_usd is None:
        print("tiergate: --budget-period needs --budget-usd", file=sys.stderr)
        return 2
    limits = KeyLimits(
        rpm=args.rpm,
        tpm=args.tpm,
        budget_usd=args.budget_usd,
        budget_period=BudgetPeriod(args.budget_period or BudgetPeriod.MONTH)
        if args.budget_usd is not None
        else None,
    )

    async def create(store: KeyStore) -> tuple[ApiKey, str]:
        key, secret = await store.create(
            args.name, models, admin=args.admin, limits=limits, cache_enabled=args.cache != "off"
        )
        if args.weight is not None:
            await store.set_weight(key.id, args.weight)
        return key, secret

    try:
        key, secret = with_keys(settings, create)
    except KeyNameTaken:
        print(
            f"tiergate: a live key is already named {args.name!r}; choose another --name, or"
            f" revoke that key first (tiergate keys revoke {args.name})",
            file=sys.stderr,
        )
        return 1
    admin = "; admin (organization usage and costs)" if key.is_admin else ""
    weight = f"; weight {args.weight:g}" if args.weight is not None else ""
    print(
        f"created key {key.id} ({key.name}); models: {', '.join(models) if models else 'all'}"
        + admin
        + describe(key.limits)
        + weight
        + ("" if key.cache_enabled else "; response cache off")
    )
    print("the secret is shown once; store it now:")
    print(secret)
    return 0


def describe(limits: KeyLimits) -> str:
    """``; rpm 600, tpm 200000, budget 50 USD per month`` (empty for a key without limits)."""
    parts = []
    if limits.rpm is not None:
        parts.append(f"rpm {limits.rpm}")
    if limits.tpm is not None:
        parts.append(f"tpm {limits.tpm}")
    if limits.budget_usd is not None:
        parts.append(f"budget {limits.budget_usd} USD per {limits.budget_period}")
    return "; " + ", ".join(parts) if parts else ""


def cmd_keys_update(args: argparse.Namespace, settings: Settings) -> int:
    changes: dict[str, Any] = {}
    if args.models is not None:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        changes["models"] = None if names in ([], ["all"]) else names
    for name in ("rpm", "tpm", "budget_usd"):
        value = getattr(args, name)
        if value is not UNSET:
            changes[name] = value
    if args.budget_period is not None:
        changes["budget_period"] = str(args.budget_period)
    if args.cache is not None:
        changes["cache_enabled"] = args.cache == "on"
    if not changes and args.weight is None:
        print("tiergate: nothing to change (see tiergate keys update --help)", file=sys.stderr)
        return 2
    from sqlalchemy.exc import IntegrityError

    async def update(store: KeyStore) -> list[ApiKey]:
        if args.weight is not None and not await store.set_weight(args.key, args.weight):
            return []
        return await store.update(args.key, changes)

    try:
        keys: list[ApiKey] = with_keys(settings, update)
    except IntegrityError:
        print("tiergate: --budget-period needs a budget (--budget-usd)", file=sys.stderr)
        return 2
    if not keys:
        print(f"no active key with id or name {args.key!r}", file=sys.stderr)
        return 1
    for key in keys:
        models = ", ".join(key.models) if key.models else "all"
        weight = f"; weight {args.weight:g}" if args.weight is not None else ""
        cache = "" if key.cache_enabled else "; response cache off"
        print(
            f"updated key {key.id} ({key.name}); models: {models}"
            + describe(key.limits)
            + weight
            + cache
        )
    return 0


def _money(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = with_keys(settings, lambda store: store.list())
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        models = ",".join(row["models"]) if row["models"] else "all"
        admin = " admin" if row["is_admin"] else ""
        limits = ""
        if row["weight"] != 1:
            limits += f" weight={row['weight']:g}"
        if row["rpm"] is not None:
            limits += f" rpm={row['rpm']}"
        if row["tpm"] is not None:
            limits += f" tpm={row['tpm']}"
        if not row["cache_enabled"]:
            limits += " cache=off"
        if row["budget_usd"] is not None:
            limits += (
                f" budget={_money(row['budget_usd'])}/{row['budget_period']}"
                f" spent={_money(row['spent_usd'])} remaining={_money(row['remaining_usd'])}"
            )
        print(
            f"{row['id']}  {row['name']:<20} {row['key_prefix']}…  {state:<8} models={models}"
            + admin
            + limits
        )
    return 0


def cmd_keys_budgets(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: KeyStore) -> list[dict[str, Any]]:
        return await LimitStore(store.engine).budgets()

    rows = with_keys(settings, work)
    print(f"{'KEY':<20} {'PERIOD':<6} {'SINCE':<10} {'BUDGET':>12} {'SPENT':>12} {'REMAINING':>12}")
    for row in rows:
        print(
            f"{row['key_name']:<20} {row['budget_period']:<6} {row['period_start']!s:<10}"
            f" {_money(row['budget_usd']):>12} {_money(row['spent_usd']):>12}"
            f" {_money(row['remaining_usd']):>12}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    revoked = with_keys(settings, lambda store: store.revoke(args.key))
    if not revoked:
        print(f"no active key with id or name {args.key!r}", file=sys.stderr)
        return 1
    print(f"revoked {', '.join(revoked)}")
    return 0


UNSET: Any = object()  # keys update: an option not given leaves the value as it is


def per_minute(text: str) -> int | None:
    """A --rpm / --tpm value: a positive integer; ``0`` or ``none`` means no limit."""
    if text.strip().lower() == CLEAR:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0 (0 or '{CLEAR}': no limit), got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value or None


def budget(text: str) -> Decimal | None:
    """A --budget-usd value: USD >= 0 (0 refuses every call); ``none`` means no budget."""
    if text.strip().lower() == CLEAR:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"expected an amount of USD such as 50 or 12.5 ('{CLEAR}': no budget), got {text!r}"
        ) from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite amount >= 0, got {text!r}")
    return value


def _add_limit_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--rpm", type=per_minute, default=default, help="requests per minute (0 or none: no limit)"
    )
    parser.add_argument(
        "--tpm", type=per_minute, default=default, help="tokens per minute (0 or none: no limit)"
    )
    parser.add_argument(
        "--budget-usd",
        type=budget,
        default=default,
        help="USD the key may spend per --budget-period (none: no budget)",
    )
    parser.add_argument(
        "--budget-period",
        choices=[str(p) for p in BudgetPeriod],
        default=None,
        help="day or month (calendar, UTC) or total; default month",
    )
    parser.add_argument(
        "--weight",
        type=positive_weight,
        default=None,
        help="share of each model's flex and batch slots against other keys' (default 1)",
    )
    parser.add_argument(
        "--cache",
        choices=["on", "off"],
        default=None,
        help="off: the response cache is never read nor written for this key (default on)",
    )


def add_parser(sub: Any) -> None:
    """Add ``keys create|update|list|budgets|revoke`` to the ``tiergate`` subcommands."""
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create a key; prints the secret as the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--models", default=None, help="comma-separated allowed models")
    create.add_argument(
        "--admin",
        action="store_true",
        help="may read every key's usage and costs (/v1/organization/usage/*, /costs)",
    )
    _add_limit_options(create, None)
    create.set_defaults(func=cmd_keys_create)
    update = keys.add_parser("update", help="change a key's limits, budget or models")
    update.add_argument("key", help="the key's id or name")
    update.add_argument("--models", default=None, help="comma-separated allowed models, or all")
    _add_limit_options(update, UNSET)
    update.set_defaults(func=cmd_keys_update)
    keys.add_parser(
        "list", help="list keys (with limits, budget spent and remaining)"
    ).set_defaults(func=cmd_keys_list)
    keys.add_parser("budgets", help="budgets: spent and remaining this period").set_defaults(
        func=cmd_keys_budgets
    )
    revoke = keys.add_parser("revoke", help="revoke a key by id or name")
    revoke.add_argument("key")
    revoke.set_defaults(func=cmd_keys_revoke)
