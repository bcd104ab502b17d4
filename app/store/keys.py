"""API keys: only sha256 hashes are stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ids import new_api_key, new_id
from app.vocabulary import Channel

INSERT_KEY = text(
    "INSERT INTO api_keys (id, name, key_hash, key_prefix, models, is_admin)"
    " VALUES (:id, :name, :key_hash, :key_prefix, :models, :is_admin)"
)
# Lookup by hash; revoked keys are simply not found.
FIND_KEY = text(
    "SELECT id, name, models, is_admin FROM api_keys"
    " WHERE key_hash = :key_hash AND revoked_at IS NULL"
)
REVOKE_KEY = text(
    "WITH r AS (UPDATE api_keys SET revoked_at = now()"
    " WHERE (id = :ident OR name = :ident) AND revoked_at IS NULL RETURNING id)"
    f" SELECT r.id, pg_notify('{Channel.KEYS}', r.id) FROM r"
)
GET_KEY = text(
    "SELECT id, name, models, is_admin FROM api_keys WHERE id = :id AND revoked_at IS NULL"
)
SET_WEIGHT = text(
    "UPDATE api_keys SET weight = :weight WHERE (id = :ident OR name = :ident)"
    " AND revoked_at IS NULL RETURNING id"
)
# The workers' fair shares: only keys whose weight is not the default (a short list).
WEIGHTS = text("SELECT name, weight FROM api_keys WHERE revoked_at IS NULL AND weight <> 1")
LIST_KEYS = text(
    "SELECT id, name, key_prefix, models, is_admin, weight, created_at, revoked_at FROM api_keys"
    " ORDER BY created_at"
)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """The authenticated caller."""

    id: str
    name: str
    models: tuple[str, ...] | None
    is_admin: bool = False  # may read the organization usage and costs of every key

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        models=tuple(row.models) if row.models else None,
        is_admin=bool(row.is_admin),
    )


class KeyStore:
    """SQL for the ``api_keys`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self, name: str, models: list[str] | None, *, admin: bool = False
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it with its secret (never stored in clear)."""
        secret = new_api_key()
        key = ApiKey(
            id=new_id("key_"), name=name, models=tuple(models) if models else None, is_admin=admin
        )
        async with self.engine.connect() as conn:
            await conn.execute(
                INSERT_KEY,
                {
                    "id": key.id,
                    "name": name,
                    "key_hash": hash_key(secret),
                    "key_prefix": secret[:7],
                    "models": list(models) if models else None,
                    "is_admin": admin,
                },
            )
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
