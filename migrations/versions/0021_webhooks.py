"""webhooks: endpoints, the outbox of deliveries, and the triggers that write it

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-08 10:00:00

- ``webhook_endpoints``: where events go (one key's events, or every key's when
  ``owner_key_id`` is NULL), the event types, the signing secret (and a rotated one still
  signing until ``previous_secret_until``), enabled or disabled and why.
- ``webhook_deliveries``: the outbox, one row per event and endpoint: pending until the
  endpoint answers 2xx (``delivered``) or the event is too old (``failed``); ``attempts``,
  ``next_attempt_at``, ``last_status`` and ``last_error`` say how it goes.
- Triggers write the outbox in the statement that makes the status final, whichever path
  does it (a worker's outcome, a cancel, an expiry sweep, a rescue, a provider's batch, a
  cache hit written final): a background ``/v1/responses`` row reaching ``completed``
  (``response.completed``, or ``response.incomplete`` when its Response says so),
  ``failed`` or ``expired`` (``response.failed``), ``cancelled`` (``response.cancelled``);
  a Batch API batch reaching ``completed``, ``failed``, ``cancelled`` or ``expired``
  (``batch.*``). Their ``WHEN`` clauses are tested in C for every row, so realtime, flex
  and batch-line rows never call the function; a background row calls it once, and it ends
  after one index probe when no enabled endpoint could want the event. Rows are written
  only for matching endpoints, with one NOTIFY ``tiergate_webhooks`` that wakes the
  delivering workers when the transaction commits.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = "('completed', 'failed', 'cancelled', 'expired')"

FUNCTIONS = """
CREATE FUNCTION tiergate_webhook_event(p_type text, p_object text, p_owner text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    evt text := 'evt_'
        || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000000)::bigint), 13, '0')
        || substr(md5(gen_random_uuid()::text), 1, 20);
BEGIN
    INSERT INTO webhook_deliveries (event_id, endpoint_id, event_type, object_id, owner_key_id)
    SELECT evt, e.id, p_type, p_object, p_owner
    FROM webhook_endpoints e
    WHERE e.enabled AND (e.owner_key_id IS NULL OR e.owner_key_id = p_owner)
      AND p_type = ANY(e.events);
    IF FOUND THEN
        PERFORM pg_notify('tiergate_webhooks', '');
    END IF;
END $$;

CREATE FUNCTION tiergate_response_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.enabled
                   AND (e.owner_key_id IS NULL OR e.owner_key_id = NEW.owner_key_id)) THEN
        RETURN NULL;
    END IF;
    PERFORM tiergate_webhook_event(
        CASE WHEN NEW.status = 'completed' AND NEW.response_body ->> 'status' = 'incomplete'
                  THEN 'response.incomplete'
             WHEN NEW.status = 'completed' THEN 'response.completed'
             WHEN NEW.status = 'cancelled' THEN 'response.cancelled'
             ELSE 'response.failed' END,
        NEW.id, NEW.owner_key_id);
    RETURN NULL;
END $$;

CREATE FUNCTION tiergate_batch_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tiergate_webhook_event('batch.' || NEW.status, NEW.id, NEW.owner_key_id);
    RETURN NULL;
END $$;
"""

RESPONSE_ROWS = f"NEW.background AND NEW.endpoint = '/v1/responses' AND NEW.status IN {FINAL}"
TRIGGERS = f"""
CREATE TRIGGER requests_webhook_on_update AFTER UPDATE OF status ON requests FOR EACH ROW
WHEN ({RESPONSE_ROWS} AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION tiergate_response_webhook();

CREATE TRIGGER requests_webhook_on_insert AFTER INSERT ON requests FOR EACH ROW
WHEN ({RESPONSE_ROWS})
EXECUTE FUNCTION tiergate_response_webhook();

CREATE TRIGGER batches_webhook_on_update AFTER UPDATE OF status ON batches FOR EACH ROW
WHEN (NEW.kind = 'file' AND NEW.status IN {FINAL} AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION tiergate_batch_webhook();
"""


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Text(), primary_key=True, comment="whep_..."),
        sa.Column(
            "owner_key_id",
            sa.Text(),
            sa.ForeignKey("api_keys.id"),
            nullable=True,
            comment="the key whose events it receives; NULL: every key's",
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "events", postgresql.ARRAY(sa.Text()), nullable=False, comment="event types it receives"
        ),
        sa.Column("secret", sa.Text(), nullable=False, comment="whsec_...: signs every delivery"),
        sa.Column(
            "previous_secret",
            sa.Text(),
            nullable=True,
            comment="a rotated secret, still signing ...",
        ),
        sa.Column(
            "previous_secret_until", sa.DateTime(timezone=True), nullable=True, comment="... until"
        ),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "disabled_reason",
            sa.Text(),
            nullable=True,
            comment="why: by an admin, or failing for days",
        ),
        sa.Column(
            "failing_since",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="first failed attempt since its last success",
        ),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        comment="where webhook events are sent",
    )
    op.create_index(
        "webhook_endpoints_owner_url_idx",
        "webhook_endpoints",
        [sa.text("coalesce(owner_key_id, '')"), "url"],
        unique=True,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "event_id",
            sa.Text(),
            nullable=False,
            comment="evt_...: the webhook-id of every attempt",
        ),
        sa.Column(
            "endpoint_id",
            sa.Text(),
            sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "event_type",
            sa.Text(),
            nullable=False,
            comment="response.completed, batch.failed, ...",
        ),
        sa.Column(
            "object_id", sa.Text(), nullable=False, comment="the response or batch (data.id)"
        ),
        sa.Column(
            "owner_key_id", sa.Text(), nullable=False, comment="the key the object belongs to"
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
            comment="when it is due (a claimed one: when its claim lapses)",
        ),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "last_status", sa.Integer(), nullable=True, comment="HTTP status of the last attempt"
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        comment="webhook events to deliver and how their delivery went",
    )
    op.create_index(
        "webhook_deliveries_due_idx",
        "webhook_deliveries",
        ["endpoint_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "webhook_deliveries_event_idx",
        "webhook_deliveries",
        ["event_id", "endpoint_id"],
        unique=True,
    )
    op.create_index("webhook_deliveries_created_idx", "webhook_deliveries", ["created_at"])
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute("DROP TRIGGER batches_webhook_on_update ON batches")
    op.execute("DROP TRIGGER requests_webhook_on_insert ON requests")
    op.execute("DROP TRIGGER requests_webhook_on_update ON requests")
    op.execute("DROP FUNCTION tiergate_batch_webhook()")
    op.execute("DROP FUNCTION tiergate_response_webhook()")
    op.execute("DROP FUNCTION tiergate_webhook_event(text, text, text)")
    op.drop_table("webhook_deliveries")
    op.drop_index("webhook_endpoints_owner_url_idx", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
