"""deployments: which deployment served a request; each process's view of the fleet

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 19:30:00

``requests.deployment`` names the deployment that answered (``model/deployment`` when a
fallback model did), or, while a deferred request waits for a retry, the one that failed it
last (the retry prefers another). ``requests.pinned_deployment`` holds the
``x-tiergate-deployment`` header of a deferred call. ``processes.deployments`` is what each
gateway and worker last saw of every deployment (state, calls in flight), written with its
heartbeat: ``tiergate deployments`` reads it, and processes learn each other's cool-downs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column(
            "deployment",
            sa.Text(),
            nullable=True,
            comment="the deployment that answered (model/deployment for a fallback model)",
        ),
    )
    op.add_column(
        "requests",
        sa.Column(
            "pinned_deployment",
            sa.Text(),
            nullable=True,
            comment="x-tiergate-deployment of a deferred call",
        ),
    )
    op.add_column(
        "processes",
        sa.Column("deployments", JSONB(), nullable=True, comment="its view of every deployment"),
    )


def downgrade() -> None:
    op.drop_column("processes", "deployments")
    op.drop_column("requests", "pinned_deployment")
    op.drop_column("requests", "deployment")
