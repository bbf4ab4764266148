"""jobs.integrations (W&B / MLflow reporting asked for by the job) and the relay's telemetry columns
read by /metrics: last_step_at, steps_per_second, relay_lag_seconds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 09:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("integrations", json_type, nullable=True))
        batch_op.add_column(sa.Column("last_step_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("steps_per_second", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("relay_lag_seconds", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("relay_lag_seconds")
        batch_op.drop_column("steps_per_second")
        batch_op.drop_column("last_step_at")
        batch_op.drop_column("integrations")
