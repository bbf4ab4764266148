"""dataset_lengths: a dataset's token lengths through a model's tokenizer, measured by a plan and read by
every API process (before: a cache in each process's memory, so processes judged one job differently).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 22:00:00
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
    json_type = sa.JSON().with_variant(JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "dataset_lengths",
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=500), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("rows_measured", sa.Integer(), nullable=False),
        sa.Column("rows_unreadable", sa.Integer(), nullable=False),
        sa.Column("sampled", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", json_type, nullable=True),
        sa.Column("completion_tokens", json_type, nullable=True),
        sa.Column("sequence_tokens", json_type, nullable=True),
        sa.Column("raw", json_type, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataset_id", "model"),
    )


def downgrade() -> None:
    op.drop_table("dataset_lengths")
