"""The database a CLI command works on: the configured one (the embedded server started if
it is not running), through one small engine for the command's life."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from app.store.db import create_engine
from app.store.embedded import resolve_database

S = TypeVar("S")
T = TypeVar("T")


@contextlib.asynccontextmanager
async def cli_engine(
    settings: Settings, application_name: str = "tiergate-cli"
) -> AsyncIterator[AsyncEngine]:
    """One connection's engine on the configured database, disposed of on the way out."""
    url = resolve_database(
        settings.database_url, settings.home, direct_url=settings.database_direct_url
    )
    engine = create_engine(url, pool_size=1, max_overflow=0, application_name=application_name)
    try:
        yield engine
    finally:
        await engine.dispose()


def with_store(
    settings: Settings,
    store_of: Callable[[AsyncEngine], S],
    work: Callable[[S], Awaitable[T]],
) -> T:
    """Run ``work`` on a store (``store_of(engine)``) of the configured database."""

    async def main() -> T:
        async with cli_engine(settings) as engine:
            return await work(store_of(engine))

    return asyncio.run(main())
