"""/v1/pipelines: submit stages (each a job request, reading earlier stages' outputs), read, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from api.core.pagination import AfterQuery, LimitQuery, Page, page_of
from api.deps import SessionDep, SettingsDep, TenantDep
from api.pipelines import service
from api.pipelines.schemas import PipelineCreate, PipelinePublic, PipelineStatus

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


@router.post(
    "",
    status_code=201,
    responses={
        200: {"description": "An earlier request with the same Idempotency-Key created this pipeline; it is returned."},
        201: {"description": "The pipeline was created; its first stages are queued."},
        422: {"description": "A stage is invalid (param names it: stages[i].name or stages[i].job.<field>)."},
    },
)
def create_pipeline(
    body: PipelineCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=300)] = None,
) -> PipelinePublic:
    """Submit a pipeline of training stages."""
    pipeline, created = service.create_pipeline(session, settings, tenant.id, body, idempotency_key)
    if not created:
        response.status_code = 200
    return PipelinePublic.of(service.get_pipeline(session, tenant.id, pipeline.id))


@router.get("")
def list_pipelines(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
    status: PipelineStatus | None = None,
) -> Page[PipelinePublic]:
    """List pipelines, newest first."""
    items, has_more = service.list_pipelines(session, tenant.id, limit=limit, after=after, status=status)
    return page_of(items, has_more, PipelinePublic.of)


@router.get("/{pipeline_id}")
def get_pipeline(pipeline_id: str, session: SessionDep, tenant: TenantDep) -> PipelinePublic:
    """Get a pipeline and its stages."""
    return PipelinePublic.of(service.get_pipeline(session, tenant.id, pipeline_id))


@router.post("/{pipeline_id}/cancel", responses={409: {"description": "the pipeline already finished"}})
def cancel_pipeline(pipeline_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep) -> PipelinePublic:
    """Cancel a running pipeline: its live stage is cancelled and the rest skipped."""
    return PipelinePublic.of(service.cancel_pipeline(session, settings, tenant.id, pipeline_id))
