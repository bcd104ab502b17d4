"""Alembic migrations; installed as the package ``tiergate_migrations`` (see pyproject.toml)."""
