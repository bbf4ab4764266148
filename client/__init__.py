"""alignd's Python client: typed, synchronous, over HTTP only (it imports nothing of the server).

    from client import Client
    alignd = Client()          # ALIGND_URL / ALIGND_API_KEY, or Client(base_url, api_key=...)

Resources: `alignd.datasets`, `alignd.reward_models`, `alignd.jobs`, `alignd.pipelines`, `alignd.checkpoints`.
Errors: one tree under `AlignError` (client/errors.py).
"""

from client.client import Client
from client.errors import (
    AlignError,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ChecksumMismatchError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    JobTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RangeNotSatisfiableError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from client.transport import RetryPolicy
from client.types import (
    FINAL_STATUSES,
    Checkpoint,
    Dataset,
    DatasetRows,
    DatasetValidation,
    DownloadedCheckpoint,
    Event,
    Job,
    JobError,
    Metrics,
    Pipeline,
    PipelineStage,
    Progress,
    RewardModel,
    Scores,
)

__all__ = [
    "FINAL_STATUSES",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AlignError",
    "AuthenticationError",
    "BadRequestError",
    "Checkpoint",
    "ChecksumMismatchError",
    "Client",
    "ConflictError",
    "Dataset",
    "DatasetRows",
    "DatasetValidation",
    "DownloadedCheckpoint",
    "Event",
    "InternalServerError",
    "InvalidRequestError",
    "Job",
    "JobError",
    "JobTimeoutError",
    "Metrics",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Pipeline",
    "PipelineStage",
    "Progress",
    "RangeNotSatisfiableError",
    "RateLimitError",
    "RetryPolicy",
    "RewardModel",
    "Scores",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
]
