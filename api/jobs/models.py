from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.core.db import Base, utcnow
from api.core.ids import new_id

LIVE_STATUSES = ("queued", "running", "cancelling", "pausing", "paused")
"""Statuses of jobs that may still train (a paused one resumes): what they use must stay."""
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Job(Base):
    """The source of truth for a job (DESIGN §5). The broker only carries its id."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(300))
    algorithm: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    base_model: Mapped[str] = mapped_column(String(500))  # MODEL_REF as the client gave it
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    eval_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    reward_model_id: Mapped[str | None] = mapped_column(ForeignKey("reward_models.id"))
    # Inline reward spec (components) when no reward_model_id was given.
    reward: Mapped[list[Any] | None]
    hyperparameters: Mapped[dict[str, Any]]  # resolved: defaults filled in
    lora: Mapped[dict[str, Any] | None]
    seed: Mapped[int] = mapped_column(default=0)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    attempt: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    # When the job id last reached the broker; NULL while queued means the send failed (or is in
    # flight) and the reaper sends it again.
    enqueued_at: Mapped[datetime | None]
    progress: Mapped[dict[str, Any] | None]  # {step, total_steps, epoch, eta_seconds}
    metrics: Mapped[dict[str, Any] | None]  # latest value of each metric
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    output_checkpoint_id: Mapped[str | None] = mapped_column(String(40))
    # Highest event seq handed out for this job; events get seq = last_event_seq + 1.
    last_event_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Experiment trackers the worker reports to: [{"type": "wandb", "wandb": {...}}, ...] (JobCreate).
    integrations: Mapped[list[Any] | None]
    # Telemetry written by the life cycle and the relay, read by /metrics (api/ops/metrics.py):
    # when the job last advanced a step (or its current attempt was claimed, whichever is later),
    # its recent steps per second, and how long the newest trainer output took to reach the database.
    last_step_at: Mapped[datetime | None]
    steps_per_second: Mapped[float | None] = mapped_column(Double)
    relay_lag_seconds: Mapped[float | None] = mapped_column(Double)
    # evaluate jobs: the candidate MODEL_REFs scored besides base_model, and {model ref: {metric: value}}
    # of every model scored so far (the relay fills it from the trainer's per-model metrics events).
    models: Mapped[list[Any] | None]
    results: Mapped[dict[str, Any] | None]


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(20))  # status | metrics | checkpoint | log | sample
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
