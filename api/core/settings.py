"""One typed settings object, read once from ALIGND_* environment variables (DESIGN §8).

With nothing set, everything lives under one data directory: a SQLite database, a SQLite broker
(kombu's SQLAlchemy transport) and local artifacts, and `alignd serve` runs an embedded worker.
Nothing else in api/ or worker/ reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGND_", use_attribute_docstrings=True)

    environment: Literal["development", "production"] = "development"
    """production refuses the embedded SQLite defaults (it needs database_url and broker_url)."""
    data_dir: Path = Path("alignd-data")
    """Root of the embedded defaults (database, broker, artifacts, models, job scratch)."""
    database_url: str | None = None
    """SQLAlchemy URL; default sqlite:///<data_dir>/alignd.db. Postgres: postgresql+psycopg://..."""
    broker_url: str | None = None
    """Celery broker URL; default sqla+sqlite:///<data_dir>/broker.db. Redis: redis://..."""
    storage_url: str | None = None
    """Artifact store: file:///path (default <data_dir>/artifacts) or s3://bucket/prefix (see s3_*)."""
    s3_endpoint_url: str | None = None
    """S3 API endpoint for MinIO, R2, Ceph (e.g. http://minio:9000); unset: AWS's own for the region."""
    s3_region: str | None = None
    """S3 region (e.g. eu-west-1; R2 uses auto); unset: boto3's default (AWS_REGION, ~/.aws/config)."""
    s3_access_key_id: str | None = None
    """S3 access key id; unset: boto3's default credential chain (AWS_* variables, instance role)."""
    s3_secret_access_key: SecretStr | None = None
    """S3 secret access key (goes with s3_access_key_id)."""
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """Bucket in the host name (virtual) or in the path (path: most MinIO and Ceph setups)."""
    s3_part_size_bytes: int = Field(64 * 1024**2, ge=5 * 1024**2)
    """Objects above this size are uploaded in parts of this size (S3's minimum part is 5 MiB)."""
    s3_timeout_seconds: float = Field(30.0, gt=0)
    """Connect and read timeout of one S3 request (an unreachable store fails instead of hanging)."""
    s3_max_attempts: int = Field(3, ge=1)
    """Tries per S3 request, retries of throttling and transient errors included."""
    models_dir: Path | None = None
    """Server model directory, one folder per model name; default <data_dir>/models."""
    work_dir: Path | None = None
    """Scratch space of the worker for running jobs; default <data_dir>/work."""
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    """Largest dataset upload accepted (413 above it)."""
    max_dataset_bytes: int | None = Field(None, ge=1)
    """Largest dataset once decompressed (413 above it; datasets are stored decompressed); default 4x
    max_upload_bytes, so a .jsonl.gz of ordinary text (3-6x smaller) fits when its upload does."""
    max_compression_ratio: float = Field(100.0, gt=1)
    """A .jsonl.gz that expands more than this many times its size (checked past 8 MiB) is refused (413)."""
    max_json_body_bytes: int = Field(1024**2, ge=1)
    """Largest request body other than a multipart dataset upload (413 above it, streamed bytes counted)."""
    allow_hub_models: bool = True
    """Accept Hugging Face hub ids as MODEL_REF (fetched into the hub cache, never read as a path)."""
    hub_cache_dir: Path | None = None
    """Hugging Face hub cache that hub-id models are fetched into; default huggingface_hub's own."""
    trust_remote_code: bool = False
    """Allow models that ship their own Python code (off: weights load from safetensors only)."""
    score_timeout_seconds: float = Field(120.0, gt=0, le=3600)
    """Deadline of one POST /v1/reward-models/{id}/score; its scoring process is killed past it (504)."""
    max_concurrent_scores: int = Field(2, ge=1, le=64)
    """Scoring processes one API process runs at once; more requests get 503 scoring_busy."""
    auth_cache_seconds: float = Field(5.0, ge=0, le=60)
    """How long an API process trusts a key it has checked before looking it up again; a revoked key is
    refused by every API process at most this long after the revocation (0: look every request's key up)."""
    max_concurrent_submissions: int = Field(4, ge=1, le=64)
    """Job submissions (POST /v1/jobs) one API process works on at once, on threads of their own; more
    wait their turn, so a burst of submissions cannot take the threads that reads (job GETs, streams) need."""
    lease_seconds: int = Field(120, ge=5)
    """A running job whose lease is not renewed for this long goes back to the queue."""
    heartbeat_seconds: float = Field(15.0, gt=0)
    """How often a worker renews the lease of its running job."""
    reap_interval_seconds: float = Field(30.0, gt=0)
    """How often a worker looks for jobs with expired leases."""
    resend_unclaimed_seconds: float = Field(600.0, gt=0)
    """A queued job sent this long ago and still not claimed is sent again (the broker lost it)."""
    orphan_sweep_seconds: float = Field(3600.0, gt=0)
    """How often a worker deletes checkpoint archives that no checkpoint row names (worker/reaper.py)."""
    orphan_grace_seconds: float = Field(3600.0, ge=60)
    """An archive without a row is deleted only once it is this old (a worker writes its row right after)."""
    max_attempts: int = Field(3, ge=1)
    """Attempts before a job whose worker keeps dying is failed."""
    queue: str = "alignd"
    """Celery queue jobs are sent to (route GPU kinds with separate queues)."""
    worker_id: str | None = None
    """Name of this worker in job rows; default hostname:pid."""
    event_batch_size: int = Field(50, ge=1)
    """Trainer events relayed to the database per transaction."""
    worker_gpus: int | None = Field(None, ge=0)
    """GPUs a worker may use; default: as many as torch sees (0 on a CPU machine)."""
    gpus_per_job: int = Field(1, ge=1)
    """GPUs one job trains on; above 1 the trainer runs under `accelerate launch`."""
    worker_gpu_memory_gb: float | None = Field(None, gt=0, le=65536)
    """Memory (GiB) of one GPU of the workers jobs are queued to. When set, job creation plans each job
    (docs/plan.md) and refuses one whose planned peak exceeds it (422 job_does_not_fit); unset: no check."""
    wandb_api_key: SecretStr | None = None
    """Weights & Biases API key the workers report jobs' `wandb` integrations with (never from a request)."""
    wandb_base_url: str | None = None
    """W&B server for a self-hosted W&B; unset: wandb's default (api.wandb.ai)."""
    wandb_mode: Literal["online", "offline"] = "online"
    """offline: W&B runs are written under wandb_dir only (to `wandb sync` later); no API key needed."""
    wandb_dir: Path | None = None
    """Where W&B keeps its run files; default <work_dir>/wandb."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking server for jobs' `mlflow` integrations that name none (http(s)://..., or file:/path,
    databricks). Its credentials come from the workers' MLFLOW_TRACKING_* variables."""

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production":
            missing = [n for n in ("database_url", "broker_url") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"production needs ALIGND_{missing[0].upper()} (no SQLite defaults)")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'alignd.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir.resolve() / 'broker.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.data_dir.resolve() / 'artifacts'}"

    @property
    def resolved_max_dataset_bytes(self) -> int:
        return self.max_dataset_bytes or 4 * self.max_upload_bytes

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.data_dir / "work").resolve()

    @property
    def embedded(self) -> bool:
        """True when the broker is the embedded SQLite one (serve then runs a worker itself)."""
        return self.resolved_broker_url.startswith("sqla+")


@lru_cache
def get_settings() -> Settings:
    return Settings()
