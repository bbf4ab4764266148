"""/v1/jobs: submit, read, list, cancel, pause, resume, events (paged and SSE), metrics series, checkpoints."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from weakref import WeakKeyDictionary

import anyio
from fastapi import APIRouter, Header, Query, Response
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse

from api.checkpoints.schemas import CheckpointPublic
from api.checkpoints.service import list_for_job
from api.core.errors import InvalidRequest
from api.core.pagination import AfterQuery, LimitQuery, Page, page_of
from api.core.settings import Settings
from api.core.validation import DB_INT_MAX
from api.deps import SessionDep, SettingsDep, TenantDep, read_on_thread
from api.jobs import service
from api.jobs.schemas import EventPage, EventPublic, JobCreate, JobPublic, JobStatus, MetricsSeries
from api.jobs.stream import event_stream
from trainer.config import JOB_CONFIGS, JobAlgorithm

router = APIRouter(prefix="/jobs", tags=["jobs"])
hyperparameters_router = APIRouter(prefix="/hyperparameters", tags=["jobs"])

SeqQuery = Annotated[int, Query(ge=0, le=DB_INT_MAX, description="Return events with seq greater than this.")]


@router.post(
    "",
    status_code=201,
    responses={
        200: {"description": "An earlier request with the same Idempotency-Key created this job; it is returned."},
        201: {"description": "The job was created and queued."},
        422: {"description": "A reference, the dataset kind or a hyperparameter is invalid (param names it)."},
    },
)
async def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=300)] = None,
) -> JobPublic:
    """Submit a training or evaluation job."""
    job, created = await anyio.to_thread.run_sync(
        _create_job, session, settings, tenant.id, body, idempotency_key, limiter=submission_threads(settings)
    )
    if not created:
        response.status_code = 200
    return job


def _create_job(
    session: Session, settings: Settings, tenant_id: str, body: JobCreate, idempotency_key: str | None
) -> tuple[JobPublic, bool]:
    job, created = service.create_job(session, settings, tenant_id, body, idempotency_key)
    return JobPublic.of(job), created


_submission_threads: WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = WeakKeyDictionary()


def submission_threads(settings: Settings) -> anyio.CapacityLimiter:
    """This event loop's threads for job submissions (`max_concurrent_submissions`), apart from the default
    pool every other sync route and dependency runs on: a burst of submissions (each a dozen queries,
    two commits and a broker send) waits here instead of taking the threads job GETs and streams need."""
    loop = asyncio.get_running_loop()
    limiter = _submission_threads.get(loop)
    if limiter is None:
        limiter = _submission_threads[loop] = anyio.CapacityLimiter(settings.max_concurrent_submissions)
    return limiter


@router.get("")
async def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
    status: JobStatus | None = None,
    algorithm: JobAlgorithm | None = None,
) -> Page[JobPublic]:
    """List jobs, newest first."""

    def read() -> Page[JobPublic]:
        items, has_more = service.list_jobs(
            session, tenant.id, limit=limit, after=after, status=status, algorithm=algorithm
        )
        return page_of(items, has_more, JobPublic.of)

    return await read_on_thread(session, read)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Get a job."""
    # Clients poll this route: the body is JobPublic's own JSON, the bytes FastAPI would send, rendered on
    # the read's thread trip; FastAPI skips validating the returned model again (response_model documents it).
    job = await read_on_thread(session, lambda: service.read_job(session, tenant.id, job_id).model_dump_json())
    return Response(job, media_type="application/json")


@router.post("/{job_id}/cancel", responses={409: {"description": "the job already finished"}})
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Cancel a queued or running job."""
    return JobPublic.of(service.cancel_job(session, tenant.id, job_id))


@router.post(
    "/{job_id}/pause",
    responses={
        200: {"description": "queued -> paused at once; running -> pausing (saved at the next step boundary)."},
        409: {"description": "job_not_pausable: the job is being cancelled or already finished."},
    },
)
def pause_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Pause a queued or running job (idempotent)."""
    return JobPublic.of(service.pause_job(session, tenant.id, job_id))


@router.post(
    "/{job_id}/resume",
    responses={
        200: {"description": "paused -> queued: continues from its latest checkpoint on any worker."},
        409: {"description": "job_not_resumable: the job is still pausing, being cancelled or finished."},
    },
)
def resume_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Resume a paused job (idempotent)."""
    return JobPublic.of(service.resume_job(session, tenant.id, job_id))


@router.get("/{job_id}/events")
def list_events(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    after: SeqQuery = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    """List a job's events in order."""
    job = service.get_job(session, tenant.id, job_id)
    events, has_more = service.list_events(session, job, after=after, limit=limit)
    return EventPage(data=[EventPublic.model_validate(e, from_attributes=True) for e in events], has_more=has_more)


@router.get(
    "/{job_id}/events/stream",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "id = seq, event = type, data = event JSON"}},
)
def stream_events(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=DB_INT_MAX, description="Start after this seq (Last-Event-ID wins).")
    ] = None,
) -> EventSourceResponse:
    """Stream a job's events (Server-Sent Events); ends after the job finishes."""
    job = service.get_job(session, tenant.id, job_id)
    start = after or 0
    if last_event_id:
        seq = last_event_id.strip()
        if not (seq.isascii() and seq.isdigit()) or int(seq) > DB_INT_MAX:
            raise InvalidRequest(
                f"Last-Event-ID must be an event seq (an integer from 0 to {DB_INT_MAX})", param="Last-Event-ID"
            )
        start = int(seq)
    session.close()  # the stream polls with its own short sessions
    return EventSourceResponse(event_stream(job.id, start), ping=15)


@router.get("/{job_id}/metrics")
def job_metrics(job_id: str, session: SessionDep, tenant: TenantDep) -> MetricsSeries:
    """A job's metrics as series of [step, value]."""
    job = service.get_job(session, tenant.id, job_id)
    return MetricsSeries(series=service.metric_series(session, job))


@router.get("/{job_id}/checkpoints")
def list_checkpoints(job_id: str, session: SessionDep, tenant: TenantDep) -> Page[CheckpointPublic]:
    """List a job's checkpoints by step."""
    job = service.get_job(session, tenant.id, job_id)
    return Page(data=[CheckpointPublic.model_validate(c) for c in list_for_job(session, job.id)], has_more=False)


@hyperparameters_router.get("/{algorithm}/schema")
def hyperparameters_schema(algorithm: JobAlgorithm, tenant: TenantDep) -> dict[str, Any]:
    """The JSON schema of an algorithm's `hyperparameters` (the config class job create validates them with:
    defaults, bounds, descriptions); the dashboard builds its job form from it and JobCreate's schema."""
    return JOB_CONFIGS[algorithm].model_json_schema()
