from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from api.core.db import Base, utcnow
from api.core.ids import new_id
from api.jobs.models import Job

LIVE_PIPELINE_STATUSES = ("running", "cancelling")
FINAL_PIPELINE_STATUSES = ("succeeded", "failed", "cancelled")


class Pipeline(Base):
    """Stages run in order of their inputs. Its stages' job rows are the truth about each stage; the
    pipeline row only records what followed from them (status, error, output checkpoint)."""

    __tablename__ = "pipelines"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_pipelines_tenant_idempotency"),
        Index("ix_pipelines_tenant_created", "tenant_id", "created_at"),
        Index("ix_pipelines_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pipe"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default="running")
    pipeline_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    output_checkpoint_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    stages: Mapped[list["PipelineStage"]] = relationship(
        order_by="PipelineStage.position", back_populates="pipeline", cascade="all, delete-orphan"
    )


class PipelineStage(Base):
    """One stage: its job request as the client gave it (`stage:<name>` references and all) until its
    inputs have succeeded and it becomes a job (`job_id`), or `skipped_reason` once it never will."""

    __tablename__ = "pipeline_stages"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "position", name="uq_pipeline_stages_position"),
        UniqueConstraint("pipeline_id", "name", name="uq_pipeline_stages_name"),
        Index("ix_pipeline_stages_job", "job_id", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(20))
    request: Mapped[dict[str, Any]]
    """The stage's job request (JobCreate as JSON) with its `stage:<name>` references unresolved."""
    depends_on: Mapped[list[Any]]
    """Names of the earlier stages whose outputs it reads."""
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    skipped_reason: Mapped[str | None] = mapped_column(Text)

    pipeline: Mapped[Pipeline] = relationship(back_populates="stages")
    job: Mapped[Job | None] = relationship(viewonly=True)
