"""API keys: only sha256 hashes are stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ids import new_api_key, new_id
from app.keys import NO_LIMITS, ApiKey, KeyLimits
from app.store.limits import SEED_SPEND
from app.vocabulary import BudgetPeriod, Channel

INSERT_KEY = text(
    "INSERT INTO api_keys (id, name, key_hash, key_prefix, models, is_admin, rpm, tpm,"
    " budget_usd, budget_period, cache_enabled) VALUES (:id, :name, :key_hash, :key_prefix,"
    " :models, :is_admin, :rpm, :tpm, :budget_usd, :budget_period, :cache_enabled)"
)
KEY_COLUMNS = "id, name, models, is_admin, rpm, tpm, budget_usd, budget_period, cache_enabled"
# Lookup by hash; revoked keys are simply not found.
FIND_KEY = text(
    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL"
)
REVOKE_KEY = text(
    "WITH r AS (UPDATE api_keys SET revoked_at = now()"
    " WHERE (id = :ident OR name = :ident) AND revoked_at IS NULL RETURNING id)"
    f" SELECT r.id, pg_notify('{Channel.KEYS}', r.id) FROM r"
)
GET_KEY = text(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = :id AND revoked_at IS NULL")
# Changes only the columns flagged ``set_*``; every gateway drops the key from its cache.
UPDATE_KEY = text(
    f"""
WITH u AS (
    UPDATE api_keys SET
        models = CASE WHEN :set_models THEN CAST(:models AS text[]) ELSE models END,
        rpm = CASE WHEN :set_rpm THEN CAST(:rpm AS integer) ELSE rpm END,
        tpm = CASE WHEN :set_tpm THEN CAST(:tpm AS bigint) ELSE tpm END,
        budget_usd = CASE WHEN :set_budget THEN CAST(:budget_usd AS numeric) ELSE budget_usd END,
        budget_period = CASE
            WHEN :set_budget AND :budget_usd IS NULL THEN NULL
            WHEN CAST(:budget_period AS text) IS NOT NULL THEN :budget_period
            WHEN :set_budget THEN coalesce(budget_period, '{BudgetPeriod.MONTH}')
            ELSE budget_period END,
        cache_enabled = CASE WHEN :set_cache THEN CAST(:cache_enabled AS boolean)
            ELSE cache_enabled END
    WHERE (id = :ident OR name = :ident) AND revoked_at IS NULL
    RETURNING {KEY_COLUMNS}
) SELECT u.*, pg_notify('{Channel.KEYS}', u.id) FROM u
"""
)
SET_WEIGHT = text(
    "UPDATE api_keys SET weight = :weight WHERE (id = :ident OR name = :ident)"
    " AND revoked_at IS NULL RETURNING id"
)
# The workers' fair shares: only keys whose weight is not the default (a short list).
WEIGHTS = text("SELECT name, weight FROM api_keys WHERE revoked_at IS NULL AND weight <> 1")
LIST_KEYS = text(
    "SELECT k.id, k.name, k.key_prefix, k.models, k.is_admin, k.weight, k.created_at,"
    " k.revoked_at, k.rpm, k.tpm, k.budget_usd, k.budget_period, b.spent_usd, b.remaining_usd,"
    " k.cache_enabled"
    " FROM api_keys k LEFT JOIN tiergate_budgets b ON b.key_id = k.id ORDER BY k.created_at"
)


LIVE_NAME_INDEX = "api_keys_live_name_idx"


class KeyNameTaken(ValueError):
    """A live key already has this name (names are unique among live keys)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        models=tuple(row.models) if row.models else None,
        is_admin=bool(row.is_admin),
        cache_enabled=bool(row.cache_enabled),
        limits=KeyLimits(
            rpm=row.rpm,
            tpm=row.tpm,
            budget_usd=row.budget_usd,
            budget_period=BudgetPeriod(row.budget_period) if row.budget_period else None,
        ),
    )


class KeyStore:
    """SQL for the ``api_keys`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self,
        name: str,
        models: list[str] | None,
        *,
        admin: bool = False,
        limits: KeyLimits = NO_LIMITS,
        cache_enabled: bool = True,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it with its secret (never stored in clear).

        Raises ``KeyNameTaken`` when a live key already has ``name``.
        """
        secret = new_api_key()
        key = ApiKey(
            id=new_id("key_"),
            name=name,
            models=tuple(models) if models else None,
            is_admin=admin,
            limits=limits,
            cache_enabled=cache_enabled,
        )
        async with self.engine.connect() as conn:
            try:
                await conn.execute(
                    INSERT_KEY,
                    {
                        "id": key.id,
                        "name": name,
                        "key_hash": hash_key(secret),
                        "key_prefix": secret[:7],
                        "models": list(models) if models else None,
                        "is_admin": admin,
                        "rpm": limits.rpm,
                        "tpm": limits.tpm,
                        "budget_usd": limits.budget_usd,
                        "budget_period": limits.budget_period,
                        "cache_enabled": cache_enabled,
                    },
                )
            except IntegrityError as exc:
                if LIVE_NAME_INDEX in str(exc.orig):
                    raise KeyNameTaken(name) from None
                raise
        return key, secret

    async def find(self, secret: str) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(FIND_KEY, {"key_hash": hash_key(secret)})).first()
        if row is None:
            return None
        return _key(row)

    async def get(self, id: str) -> ApiKey | None:
        """An active key by id (for work done on its behalf later, e.g. batch validation)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(GET_KEY, {"id": id})).first()
        if row is None:
            return None
        return _key(row)

    async def update(self, ident: str, changes: dict[str, Any]) -> list[ApiKey]:
        """Change a key's ``models``, ``rpm``, ``tpm``, ``budget_usd``, ``budget_period`` and
        ``cache_enabled``
        (those present in ``changes``; None clears). Gateways drop it from their caches."""
        params = {
            "ident": ident,
            "set_models": "models" in changes,
            "models": changes.get("models"),
            "set_rpm": "rpm" in changes,
            "rpm": changes.get("rpm"),
            "set_tpm": "tpm" in changes,
            "tpm": changes.get("tpm"),
            "set_budget": "budget_usd" in changes,
            "budget_usd": changes.get("budget_usd"),
            "budget_period": changes.get("budget_period"),
            "set_cache": "cache_enabled" in changes,
            "cache_enabled": changes.get("cache_enabled"),
        }
        async with self.engine.begin() as conn:
            keys = [_key(row) for row in await conn.execute(UPDATE_KEY, params)]
            for key in keys:  # a new budget or period starts from what was spent in it
                await conn.execute(SEED_SPEND, {"key": key.id})
        return keys

    async def revoke(self, ident: str) -> list[str]:
        """Revoke by id or name; gateways drop the key from their caches via NOTIFY."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(REVOKE_KEY, {"ident": ident})).all()
        return [row.id for row in rows]

    async def set_weight(self, ident: str, weight: float) -> list[str]:
        """Set the fair-share weight of the active key with this id or name."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(SET_WEIGHT, {"ident": ident, "weight": weight})).all()
        return [row.id for row in rows]

    async def weights(self) -> dict[str, float]:
        """Active keys' weights by name, for those that are not 1."""
        async with self.engine.connect() as conn:
            return {row.name: float(row.weight) for row in await conn.execute(WEIGHTS)}

    async def list(self) -> list[dict[str, Any]]:
        """Every key (revoked ones too), oldest first; never a secret or a hash."""
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(LIST_KEYS)]
