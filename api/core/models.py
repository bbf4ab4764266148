"""Every ORM model in one import, for Alembic's metadata and for the worker."""

from api.auth.models import ApiKey, Tenant
from api.checkpoints.models import Checkpoint
from api.core.db import Base
from api.datasets.models import Dataset, DatasetTokenLengths
from api.jobs.models import Job, JobEvent
from api.pipelines.models import Pipeline, PipelineStage
from api.reward_models.models import RewardModel

__all__ = [
    "ApiKey",
    "Base",
    "Checkpoint",
    "Dataset",
    "DatasetTokenLengths",
    "Job",
    "JobEvent",
    "Pipeline",
    "PipelineStage",
    "RewardModel",
    "Tenant",
]
