"""Apply the Alembic migrations (procrastinate's schema included) to a database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.dburl import DatabaseURL

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def alembic_config(url: DatabaseURL) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = url
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: DatabaseURL) -> None:
    """``alembic upgrade head``; safe to run from several processes at once."""
    command.upgrade(alembic_config(url), "head")
