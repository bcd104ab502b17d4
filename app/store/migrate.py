"""Apply the Alembic migrations (procrastinate's schema included) to a database.

The scripts live in the checkout's top-level ``migrations/`` (where ``alembic.ini`` points the
``alembic`` command) and ship in the distribution as the package ``tiergate_migrations``, so an
installed tiergate migrates from any directory without ``alembic.ini``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.store.dburl import DatabaseURL


def script_location() -> Path:
    """The folder of the Alembic scripts (``env.py``, ``versions/``, ``sql/``)."""
    return Path(str(files("tiergate_migrations")))


def alembic_config(url: DatabaseURL) -> Config:
    """An Alembic configuration built in code: no ``alembic.ini`` is read."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = url
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: DatabaseURL) -> None:
    """``alembic upgrade head``; safe to run from several processes at once."""
    command.upgrade(alembic_config(url), "head")
