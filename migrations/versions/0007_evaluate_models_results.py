"""jobs.models (the candidate MODEL_REFs an `evaluate` job scores besides its base model) and
jobs.results (each evaluated model's metrics, written by the relay).

Revision ID: 0007
Revises: 0008 (main's head when this branch merged it; the integrator re-chains)
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("models", json_type, nullable=True))
        batch_op.add_column(sa.Column("results", json_type, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("results")
        batch_op.drop_column("models")
