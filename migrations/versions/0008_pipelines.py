"""pipelines and pipeline_stages: stages (each a job request) whose inputs may name an earlier stage's
output; a stage's job is created once its inputs have succeeded.

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-26 11:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "pipelines",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("metadata", json_type, nullable=True),
        sa.Column("idempotency_key", sa.String(length=300), nullable=True),
        sa.Column("error_code", sa.String(length=100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("output_checkpoint_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_pipelines_tenant_idempotency"),
    )
    op.create_index("ix_pipelines_tenant_created", "pipelines", ["tenant_id", "created_at"])
    op.create_index("ix_pipelines_status", "pipelines", ["status"])
    op.create_table(
        "pipeline_stages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("request", json_type, nullable=False),
        sa.Column("depends_on", json_type, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("skipped_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipelines.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pipeline_id", "position", name="uq_pipeline_stages_position"),
        sa.UniqueConstraint("pipeline_id", "name", name="uq_pipeline_stages_name"),
    )
    op.create_index("ix_pipeline_stages_job", "pipeline_stages", ["job_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_pipeline_stages_job", table_name="pipeline_stages")
    op.drop_table("pipeline_stages")
    op.drop_index("ix_pipelines_status", table_name="pipelines")
    op.drop_index("ix_pipelines_tenant_created", table_name="pipelines")
    op.drop_table("pipelines")
