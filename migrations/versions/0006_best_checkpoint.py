"""jobs.best_checkpoint_id and jobs.best_metric: the checkpoint of kind "best" that the trainer keeps by
hyperparameters.best_metric, and {name, mode, value, step} of that metric there (issue 11).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("best_checkpoint_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("best_metric", json_type, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("best_metric")
        batch_op.drop_column("best_checkpoint_id")
