"""``tiergate keys``: create, list and revoke API keys (only their hashes are stored)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app.settings import Settings
from app.store.db import create_engine
from app.store.embedded import resolve_database
from app.store.keys import ApiKey, KeyStore

T = TypeVar("T")


def with_keys(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run ``work`` on a KeyStore of the configured database, then close it."""

    async def main() -> T:
        engine = create_engine(
            resolve_database(settings.database_url, settings.home), pool_size=1, max_overflow=0
        )
        try:
            return await work(KeyStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


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

    async def create(store: KeyStore) -> tuple[ApiKey, str]:
        key, secret = await store.create(args.name, models, admin=args.admin)
        if args.weight is not None:
            await store.set_weight(key.id, args.weight)
        return key, secret

    key, secret = with_keys(settings, create)
    admin = "; admin (organization usage and costs)" if key.is_admin else ""
    weight = f"; weight {args.weight:g}" if args.weight is not None else ""
    print(
        f"created key {key.id} ({key.name}); models: {', '.join(models) if models else 'all'}"
        + admin
        + weight
    )
    print("the secret is shown once; store it now:")
    print(secret)
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = with_keys(settings, lambda store: store.list())
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        models = ",".join(row["models"]) if row["models"] else "all"
        admin = " admin" if row["is_admin"] else ""
        weight = f" weight={row['weight']:g}" if row["weight"] != 1 else ""
        print(
            f"{row['id']}  {row['name']:<20} {row['key_prefix']}…  {state:<8} models={models}"
            + admin
            + weight
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    revoked = with_keys(settings, lambda store: store.revoke(args.key))
    if not revoked:
        print(f"no active key with id or name {args.key!r}", file=sys.stderr)
        return 1
    print(f"revoked {', '.join(revoked)}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``keys create|list|revoke`` to the ``tiergate`` parser's subcommands."""
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create a key; prints the secret as the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--models", default=None, help="comma-separated allowed models")
    create.add_argument(
        "--admin",
        action="store_true",
        help="may read every key's usage and costs (/v1/organization/usage/*, /costs)",
    )
    create.add_argument(
        "--weight",
        type=positive_weight,
        default=None,
        help="share of each model's flex and batch slots against other keys' (default 1)",
    )
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list keys").set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id or name")
    revoke.add_argument("key")
    revoke.set_defaults(func=cmd_keys_revoke)
