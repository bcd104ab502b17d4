"""The SQLAlchemy engine (asyncpg) every repository runs on, sized explicitly."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.dburl import DatabaseURL


def create_engine(url: DatabaseURL, *, pool_size: int, max_overflow: int) -> AsyncEngine:
    """A bounded pool: at most ``pool_size + max_overflow`` connections per process."""
    return create_async_engine(
        url.sqlalchemy(),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_timeout=10,
        json_serializer=lambda obj: json.dumps(obj, separators=(",", ":")),
        connect_args={"server_settings": {"application_name": "tiergate"}},
    )
