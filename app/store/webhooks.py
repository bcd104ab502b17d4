"""Webhook endpoints and the outbox of deliveries (docs/webhooks.md).

Deliveries are written by triggers (migration 0021) in the statement that makes a background
response or a batch final, so an event exists exactly when its cause was committed. Workers
claim due deliveries in bulk (``FOR UPDATE SKIP LOCKED``, at most ``per_endpoint`` in flight
per endpoint per process), each claim a lease: ``attempts`` goes up and ``next_attempt_at``
moves past the attempt's timeout, so the delivery of a worker that dies is due again when the
lease lapses, under the same ``event_id``. ``attempts`` is the fencing token of the result.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ids import new_id
from app.store.rows import FromRow
from app.vocabulary import DeliveryStatus

ENDPOINT_PREFIX = "whep_"
PENDING = f"'{DeliveryStatus.PENDING}'"


class DuplicateEndpoint(ValueError):
    """An endpoint with this URL exists already for this key (or admin-wide)."""

    def __init__(self, existing: str) -> None:
        super().__init__(existing)
        self.existing = existing


class UnknownKey(LookupError):
    """No live key has this id or name."""


@dataclass(frozen=True, slots=True)
class Endpoint(FromRow):
    """A ``webhook_endpoints`` row as ``list`` shows it (never its secrets)."""

    id: str
    owner_key_id: str | None
    key_name: str | None
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    failing_since: dt.datetime | None
    created_at: dt.datetime
    rotating_until: dt.datetime | None
    pending: int
    delivered: int
    failed: int


@dataclass(frozen=True, slots=True)
class Claimed(FromRow):
    """A delivery claimed for one attempt, with what signing and sending it needs."""

    id: int
    event_id: str
    event_type: str
    object_id: str
    created_at: int  # unix seconds: the event's created_at
    attempts: int  # this attempt's number (the fencing token)
    endpoint_id: str
    url: str
    secret: str
    previous_secret: str | None  # a rotated secret still in its grace period


FIND_KEY = text(
    "SELECT id FROM api_keys WHERE (id = :ident OR name = :ident) AND revoked_at IS NULL"
)

CREATE = text(
    """
INSERT INTO webhook_endpoints (id, owner_key_id, url, events, secret)
VALUES (:id, :owner, :url, :events, :secret)
"""
)

EXISTING = text(
    "SELECT id FROM webhook_endpoints WHERE coalesce(owner_key_id, '') = coalesce(:owner, '')"
    " AND url = :url"
)

# (owner IS NULL: every endpoint; else only that key's.)
MINE = "(CAST(:owner AS text) IS NULL OR e.owner_key_id = :owner)"

LIST = text(
    f"""
SELECT e.id, e.owner_key_id, k.name AS key_name, e.url, e.events, e.enabled,
       e.disabled_reason, e.failing_since, e.created_at,
       CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_until END
           AS rotating_until,
       coalesce(c.pending, 0) AS pending, coalesce(c.delivered, 0) AS delivered,
       coalesce(c.failed, 0) AS failed
FROM webhook_endpoints e
LEFT JOIN api_keys k ON k.id = e.owner_key_id
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = {PENDING}) AS pending,
           count(*) FILTER (WHERE status = '{DeliveryStatus.DELIVERED}') AS delivered,
           count(*) FILTER (WHERE status = '{DeliveryStatus.FAILED}') AS failed
    FROM webhook_deliveries d WHERE d.endpoint_id = e.id
) AS c ON true
WHERE {MINE}
ORDER BY e.created_at, e.id
"""
)

SET_ENABLED = text(
    f"""
UPDATE webhook_endpoints AS e SET enabled = :enabled,
    disabled_at = CASE WHEN :enabled THEN NULL ELSE now() END,
    disabled_reason = CASE WHEN :enabled THEN NULL ELSE :reason END,
    failing_since = CASE WHEN :enabled THEN NULL ELSE failing_since END
WHERE e.id = :id AND {MINE}
RETURNING e.id
"""
)

DELETE = text(f"DELETE FROM webhook_endpoints AS e WHERE e.id = :id AND {MINE} RETURNING e.id")

ROTATE = text(
    f"""
UPDATE webhook_endpoints AS e SET previous_secret = secret, secret = :secret,
    previous_secret_until = now() + make_interval(secs => :grace_s)
WHERE e.id = :id AND {MINE}
RETURNING e.previous_secret_until
"""
)

# Due deliveries of enabled endpoints, up to ``per_endpoint`` minus what this process has in
# flight for each (``busy``), ``total`` at most; each claimed for ``lease_s``.
CLAIM = text(
    f"""
UPDATE webhook_deliveries AS d
SET attempts = d.attempts + 1, last_attempt_at = now(),
    next_attempt_at = now() + make_interval(secs => :lease_s)
FROM webhook_endpoints e
WHERE e.id = d.endpoint_id AND d.status = {PENDING} AND d.id = ANY(ARRAY(
    SELECT picked.id
    FROM webhook_endpoints ep
    LEFT JOIN unnest(CAST(:busy_ids AS text[]), CAST(:busy_counts AS int[])) AS b(id, n)
        ON b.id = ep.id
    CROSS JOIN LATERAL (
        SELECT id FROM webhook_deliveries
        WHERE endpoint_id = ep.id AND status = {PENDING} AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT greatest(:per_endpoint - coalesce(b.n, 0), 0)
        FOR UPDATE SKIP LOCKED
    ) AS picked
    WHERE ep.enabled
    LIMIT :total
))
RETURNING d.id, d.event_id, d.event_type, d.object_id,
          CAST(extract(epoch FROM d.created_at) AS bigint) AS created_at, d.attempts,
          d.endpoint_id, e.url, e.secret,
          CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret
"""
)

DELIVERED = text(
    f"""
WITH d AS (
    UPDATE webhook_deliveries SET status = '{DeliveryStatus.DELIVERED}', delivered_at = now(),
        last_status = :status, last_error = NULL
    WHERE id = :id AND attempts = :attempt AND status = {PENDING}
    RETURNING endpoint_id
)
UPDATE webhook_endpoints AS e SET failing_since = NULL, last_success_at = now()
FROM d
WHERE e.id = d.endpoint_id
  AND (e.failing_since IS NOT NULL OR e.last_success_at IS NULL
       OR e.last_success_at < now() - interval '10 seconds')
"""
)

# A failed attempt: due again after its backoff, or failed for good when that would pass
# the event's age limit; its endpoint is disabled once it has failed for ``disable_s``.
FAILED = text(
    f"""
WITH d AS (
    UPDATE webhook_deliveries SET
        status = CASE WHEN created_at + make_interval(secs => :give_up_s)
                           < now() + make_interval(secs => :delay_s)
                      THEN '{DeliveryStatus.FAILED}' ELSE {PENDING} END,
        next_attempt_at = now() + make_interval(secs => :delay_s),
        last_status = :status, last_error = :error
    WHERE id = :id AND attempts = :attempt AND status = {PENDING}
    RETURNING endpoint_id, status
), e AS (
    UPDATE webhook_endpoints AS e SET
        failing_since = coalesce(e.failing_since, now()),
        enabled = e.enabled
            AND NOT coalesce(e.failing_since < now() - make_interval(secs => :disable_s), false),
        disabled_at = CASE WHEN e.enabled
                            AND e.failing_since < now() - make_interval(secs => :disable_s)
                           THEN now() ELSE e.disabled_at END,
        disabled_reason = CASE WHEN e.enabled
                                AND e.failing_since < now() - make_interval(secs => :disable_s)
                               THEN 'failing since ' || to_char(e.failing_since AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD HH24:MI:SS') || ' UTC; last error: ' || :error
                               ELSE e.disabled_reason END
    FROM d
    WHERE e.id = d.endpoint_id
    RETURNING e.id, NOT e.enabled AND e.disabled_at = now() AS just_disabled, e.disabled_reason
)
SELECT d.status, e.just_disabled, e.disabled_reason FROM d LEFT JOIN e ON true
"""
)


@dataclass(frozen=True)
class AttemptFailed:
    """What storing a failed attempt did."""

    given_up: bool  # the delivery is failed for good
    disabled: str | None  # the endpoint was disabled by it: why


class WebhookStore:
    """Endpoints (create, list, enable, disable, delete, rotate) and deliveries (claim,
    record)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def key_id(self, ident: str) -> str:
        """The id of the live key with this id or name; raises :class:`UnknownKey`."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(FIND_KEY, {"ident": ident})).scalar()
        if found is None:
            raise UnknownKey(ident)
        return str(found)

    async def create(self, owner: str | None, url: str, events: list[str], secret: str) -> str:
        """A new endpoint's id; raises :class:`DuplicateEndpoint`."""
        id = new_id(ENDPOINT_PREFIX)
        params = {"id": id, "owner": owner, "url": url, "events": events, "secret": secret}
        try:
            async with self.engine.connect() as conn:
                await conn.execute(CREATE, params)
        except IntegrityError:
            async with self.engine.connect() as conn:
                existing = (await conn.execute(EXISTING, {"owner": owner, "url": url})).scalar()
            if existing is None:
                raise
            raise DuplicateEndpoint(str(existing)) from None
        return id

    async def endpoints(self, owner: str | None = None) -> list[Endpoint]:
        """Every endpoint (``owner``: that key's only), with counts of its deliveries."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(LIST, {"owner": owner})).mappings()
            return [Endpoint.from_row(row) for row in rows]

    async def set_enabled(
        self, id: str, enabled: bool, owner: str | None = None, reason: str = "disabled by an admin"
    ) -> bool:
        """Enable or disable an endpoint; False when there is none (of ``owner``)."""
        params = {"id": id, "enabled": enabled, "owner": owner, "reason": reason}
        async with self.engine.connect() as conn:
            return (await conn.execute(SET_ENABLED, params)).first() is not None

    async def delete(self, id: str, owner: str | None = None) -> bool:
        """Delete an endpoint and its deliveries; False when there is none (of ``owner``)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(DELETE, {"id": id, "owner": owner})).first() is not None

    async def rotate(
        self, id: str, secret: str, grace_s: float, owner: str | None = None
    ) -> dt.datetime | None:
        """Sign with ``secret`` from now on, and with the old one too for ``grace_s``; returns
        when the old one stops, or None when there is no such endpoint (of ``owner``)."""
        params = {"id": id, "secret": secret, "grace_s": grace_s, "owner": owner}
        async with self.engine.connect() as conn:
            until: dt.datetime | None = (await conn.execute(ROTATE, params)).scalar()
            return until

    async def claim(
        self, busy: dict[str, int], *, per_endpoint: int, total: int, lease_s: float
    ) -> list[Claimed]:
        """Claim due deliveries (see :data:`CLAIM`)."""
        params: dict[str, Any] = {
            "busy_ids": list(busy),
            "busy_counts": list(busy.values()),
            "per_endpoint": per_endpoint,
            "total": total,
            "lease_s": lease_s,
        }
        async with self.engine.connect() as conn:
            rows = (await conn.execute(CLAIM, params)).mappings()
            return [Claimed.from_row(row) for row in rows]

    async def delivered(self, id: int, attempt: int, status: int) -> None:
        """The endpoint accepted this attempt."""
        async with self.engine.connect() as conn:
            await conn.execute(DELIVERED, {"id": id, "attempt": attempt, "status": status})

    async def failed(
        self,
        id: int,
        attempt: int,
        *,
        status: int | None,
        error: str,
        delay_s: float,
        give_up_s: float,
        disable_s: float,
    ) -> AttemptFailed | None:
        """This attempt failed: retry in ``delay_s`` (see :data:`FAILED`); None when the
        delivery had moved on (another worker took it over after the lease lapsed)."""
        params = {
            "id": id,
            "attempt": attempt,
            "status": status,
            "error": error[:1000],
            "delay_s": delay_s,
            "give_up_s": give_up_s,
            "disable_s": disable_s,
        }
        async with self.engine.connect() as conn:
            row = (await conn.execute(FAILED, params)).first()
        if row is None:
            return None
        return AttemptFailed(
            given_up=row.status == DeliveryStatus.FAILED,
            disabled=row.disabled_reason if row.just_disabled else None,
        )
