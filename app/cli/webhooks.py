"""``tiergate webhooks``: create, list, enable, disable, delete and rotate-secret endpoints.

``--key NAME`` scopes a command to one key: its endpoint receives only that key's events, and
the other commands see and change only that key's endpoints. Without it an endpoint receives
every key's events (an admin's), and the commands reach every endpoint. Secrets are printed
once, as the last line of ``create`` and ``rotate-secret``, and never logged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app.cli.database import with_store
from app.openai.webhooks import new_secret
from app.settings import Settings
from app.store.webhooks import DuplicateEndpoint, UnknownKey, WebhookStore
from app.upstream.webhook_urls import UnsafeUrl, check
from app.vocabulary import WebhookEvent

T = TypeVar("T")
EVENTS = [str(e) for e in WebhookEvent]


class Refused(Exception):
    """A mistake the user can fix: one line, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def with_webhooks(settings: Settings, work: Callable[[WebhookStore], Awaitable[T]]) -> T:
    """Run ``work`` on a WebhookStore of the configured database, then close it."""
    return with_store(settings, WebhookStore, work)


def parse_events(text: str | None) -> list[str]:
    """``--events a,b``: known event names (all of them when not given)."""
    if text is None:
        return list(EVENTS)
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in EVENTS]
    if unknown:
        raise Refused(
            f"unknown event {'names' if len(unknown) > 1 else 'name'}: {', '.join(unknown)}"
            f" (known: {', '.join(EVENTS)})",
            2,
        )
    if not names:
        raise Refused(f"--events names no event (known: {', '.join(EVENTS)})", 2)
    return names


async def _owner(store: WebhookStore, key: str | None) -> str | None:
    if key is None:
        return None
    try:
        return await store.key_id(key)
    except UnknownKey:
        raise Refused(f"no active key with id or name {key!r}") from None


def _run(command: Callable[[], int]) -> int:
    try:
        return command()
    except Refused as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return exc.code


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    def command() -> int:
        events = parse_events(args.events)
        secret = new_secret()

        async def work(store: WebhookStore) -> str:
            try:
                await check(args.url, allow_private=settings.webhooks.allow_private)
            except UnsafeUrl as exc:
                raise Refused(f"webhook URL refused: {exc}", 2) from None
            owner = await _owner(store, args.key)
            try:
                return await store.create(owner, args.url.strip(), events, secret)
            except DuplicateEndpoint as exc:
                raise Refused(
                    f"an endpoint for this URL exists already ({exc.existing}"
                    f"{', key ' + args.key if args.key else ', every key'}); delete it or use it"
                ) from None

        endpoint = with_webhooks(settings, work)
        whose = f"key {args.key}'s events" if args.key else "every key's events"
        print(f"created webhook endpoint {endpoint} ({whose}): {args.url.strip()}")
        print(f"events: {', '.join(events)}")
        print("the signing secret is shown once; store it now:")
        print(secret)
        return 0

    return _run(command)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    def command() -> int:
        async def work(store: WebhookStore) -> list[Any]:
            return await store.endpoints(await _owner(store, args.key))

        for e in with_webhooks(settings, work):
            state = "enabled" if e.enabled else f"disabled ({e.disabled_reason})"
            rotating = (
                f" previous-secret-until={e.rotating_until:%Y-%m-%d %H:%M:%S}Z"
                if e.rotating_until
                else ""
            )
            failing = (
                f" failing-since={e.failing_since:%Y-%m-%d %H:%M:%S}Z" if e.failing_since else ""
            )
            print(
                f"{e.id}  {e.key_name or '(every key)':<16} {e.url}  {state}"
                f" events={','.join(e.events)} pending={e.pending} delivered={e.delivered}"
                f" failed={e.failed}" + failing + rotating
            )
        return 0

    return _run(command)


def _change(
    args: argparse.Namespace,
    settings: Settings,
    change: Callable[[WebhookStore, str | None], Awaitable[Any]],
    done: str,
) -> int:
    def command() -> int:
        async def work(store: WebhookStore) -> Any:
            return await change(store, await _owner(store, args.key))

        if not with_webhooks(settings, work):
            whose = f" of key {args.key}" if args.key else ""
            raise Refused(f"no webhook endpoint {args.endpoint!r}{whose}")
        print(f"{done} {args.endpoint}")
        return 0

    return _run(command)


def cmd_disable(args: argparse.Namespace, settings: Settings) -> int:
    return _change(
        args, settings, lambda s, owner: s.set_enabled(args.endpoint, False, owner), "disabled"
    )


def cmd_enable(args: argparse.Namespace, settings: Settings) -> int:
    return _change(
        args, settings, lambda s, owner: s.set_enabled(args.endpoint, True, owner), "enabled"
    )


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    return _change(args, settings, lambda s, owner: s.delete(args.endpoint, owner), "deleted")


def cmd_rotate(args: argparse.Namespace, settings: Settings) -> int:
    secret = new_secret()
    grace_s = (
        settings.webhooks.rotation_grace_s if args.grace_hours is None else args.grace_hours * 3600
    )

    def command() -> int:
        async def work(store: WebhookStore) -> Any:
            return await store.rotate(args.endpoint, secret, grace_s, await _owner(store, args.key))

        until = with_webhooks(settings, work)
        if until is None:
            whose = f" of key {args.key}" if args.key else ""
            raise Refused(f"no webhook endpoint {args.endpoint!r}{whose}")
        print(
            f"rotated the secret of {args.endpoint}; the old one signs too until"
            f" {until:%Y-%m-%d %H:%M:%S}Z"
        )
        print("the new signing secret is shown once; store it now:")
        print(secret)
        return 0

    return _run(command)


def hours(text: str) -> float:
    """``--grace-hours``: a number of hours >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of hours >= 0: {text!r}")
    return value


def add_parser(sub: Any) -> None:
    """Add ``webhooks create|list|disable|enable|delete|rotate-secret``."""
    webhooks = sub.add_parser(
        "webhooks", help="signed webhooks: where events of background responses and batches go"
    ).add_subparsers(dest="webhooks", required=True)
    key_help = "the key (id or name) whose endpoints these are; default: every key's"
    create = webhooks.add_parser(
        "create", help="add an endpoint; prints its whsec_ secret as the last line"
    )
    create.add_argument("--url", required=True, help="http(s) URL that receives the events")
    create.add_argument(
        "--events", default=None, help=f"comma-separated, default all: {','.join(EVENTS)}"
    )
    create.add_argument(
        "--key", default=None, help="only this key's events (id or name); default: every key's"
    )
    create.set_defaults(func=cmd_create)
    listing = webhooks.add_parser("list", help="endpoints, their state and deliveries")
    listing.add_argument("--key", default=None, help=key_help)
    listing.set_defaults(func=cmd_list)
    for name, func, what in (
        ("disable", cmd_disable, "stop sending to an endpoint (its events are not recorded)"),
        ("enable", cmd_enable, "send to an endpoint again (also one disabled for failing)"),
        ("delete", cmd_delete, "delete an endpoint and its deliveries"),
        ("rotate-secret", cmd_rotate, "a new secret (printed last); the old one signs too"),
    ):
        cmd = webhooks.add_parser(name, help=what)
        cmd.add_argument("endpoint", help="the endpoint's id (whep_...)")
        cmd.add_argument("--key", default=None, help=key_help)
        if name == "rotate-secret":
            cmd.add_argument(
                "--grace-hours",
                type=hours,
                default=None,
                help="how long the old secret keeps signing (default: webhooks.rotation_grace_s,"
                " 24 h)",
            )
        cmd.set_defaults(func=func)
