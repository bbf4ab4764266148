"""OpenAI's fine-tuning API under /v1: /files (purpose fine-tune) and /fine_tuning/jobs.

An `openai` client with `base_url=<alignd>/v1` and an alignd API key works unchanged. Shapes,
statuses, pagination (`object: "list"`, `data`, `has_more`, `after` = the last item's id) and errors
(`{"error": {message, type, param, code}}`) are OpenAI's; api/README.md lists every mapping.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.core.uploads import stream_multipart
from api.datasets import service as datasets
from api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from api.openai_compat import service
from api.openai_compat.errors import OpenAIRoute, Unsupported
from api.openai_compat.schemas import (
    FileDeleted,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    ListPage,
)

files_router = APIRouter(prefix="/files", tags=["openai: files"], route_class=OpenAIRoute)
jobs_router = APIRouter(prefix="/fine_tuning/jobs", tags=["openai: fine-tuning"], route_class=OpenAIRoute)

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ".jsonl or .jsonl.gz"},
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                }
            }
        },
    }
}
_METADATA_KEY = re.compile(r"^metadata\[(.+)\]$")


def _page(items: list[Any], has_more: bool) -> dict[str, Any]:
    return {
        "data": items,
        "has_more": has_more,
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
    }


# ---- files ---------------------------------------------------------------------------------------


@files_router.post("", openapi_extra=_UPLOAD_DOC)
async def upload_file(
    request: Request, session: SessionDep, storage: StorageDep, settings: SettingsDep, tenant: TenantDep
) -> FileObject:
    """Upload a fine-tuning file (a dataset: validated line by line as it is stored)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
        raise datasets.UploadTooLarge(
            f"the request is larger than this server's limit of {settings.max_upload_bytes} bytes", param="file"
        )
    staged = datasets.StagedUpload(datasets.staging_dir(settings), settings.max_upload_bytes)
    try:
        form = await stream_multipart(request, "file", staged)
        if form.filename is None:
            raise datasets.DatasetInvalid("no file: send the data as the multipart field 'file'", param="file")
        service.check_purpose(form.fields.get("purpose"))
        extra = sorted(set(form.fields) - {"purpose"})
        if extra:
            raise Unsupported(f"{extra[0]} is not supported (files do not expire in alignd)", param=extra[0])
    except BaseException:
        staged.discard()
        raise
    dataset = await run_in_threadpool(
        datasets.create_dataset,
        session,
        storage,
        tenant.id,
        staged,
        name=form.filename,
        filename=form.filename,
        declared_format=None,
        limits=datasets.Limits.from_settings(settings),
    )
    return service.file_object(dataset)


@files_router.get("")
def list_files(
    session: SessionDep,
    tenant: TenantDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    after: str | None = None,
    order: Literal["desc"] = "desc",
) -> ListPage[FileObject]:
    """List fine-tuning files (datasets), newest first."""
    if purpose is not None and purpose != "fine-tune":
        return ListPage[FileObject](data=[], has_more=False)
    items, has_more = datasets.list_datasets(session, tenant.id, limit=limit, after=after)
    return ListPage[FileObject](**_page([service.file_object(d) for d in items], has_more))


@files_router.get("/{file_id}")
def retrieve_file(file_id: str, session: SessionDep, tenant: TenantDep) -> FileObject:
    return service.file_object(datasets.get_dataset(session, tenant.id, file_id))


@files_router.get("/{file_id}/content", response_class=StreamingResponse)
def file_content(file_id: str, session: SessionDep, storage: StorageDep, tenant: TenantDep) -> StreamingResponse:
    """The rows as stored: JSONL, one row per line."""
    dataset = datasets.get_dataset(session, tenant.id, file_id)
    return StreamingResponse(storage.iter_range(dataset.storage_key), media_type="application/jsonl")


@files_router.delete("/{file_id}")
def delete_file(file_id: str, session: SessionDep, storage: StorageDep, tenant: TenantDep) -> FileDeleted:
    """Delete a file (409 while a queued or running job uses it)."""
    datasets.delete_dataset(session, storage, tenant.id, file_id)
    return FileDeleted(id=file_id)


# ---- fine-tuning jobs ----------------------------------------------------------------------------


@jobs_router.post("")
def create_job(
    body: FineTuningJobCreate, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> FineTuningJob:
    """Create a fine-tuning job: method supervised -> sft, dpo -> dpo, reinforcement -> grpo."""
    return service.job_view(service.create_job(session, settings, tenant.id, body))


@jobs_router.get("")
def list_jobs(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPage[FineTuningJob]:
    """List fine-tuning jobs (sft, dpo and grpo jobs), newest first; filter with metadata[key]=value."""
    metadata = {}
    for key, value in request.query_params.multi_items():
        match = _METADATA_KEY.match(key)
        if match:
            metadata[match.group(1)] = value
        elif key == "metadata":
            raise Unsupported("filter by metadata[key]=value; metadata=null is not supported", param="metadata")
    items, has_more = service.list_jobs(session, tenant.id, limit=limit, after=after, metadata=metadata)
    return ListPage[FineTuningJob](**_page([service.job_view(j) for j in items], has_more))


@jobs_router.get("/{fine_tuning_job_id}")
def retrieve_job(fine_tuning_job_id: str, session: SessionDep, tenant: TenantDep) -> FineTuningJob:
    return service.job_view(service.get_job(session, tenant.id, fine_tuning_job_id))


@jobs_router.post("/{fine_tuning_job_id}/cancel")
def cancel_job(fine_tuning_job_id: str, session: SessionDep, tenant: TenantDep) -> FineTuningJob:
    """Cancel a queued or running job (409 once it finished)."""
    return service.job_view(service.cancel_job(session, tenant.id, fine_tuning_job_id))


@jobs_router.post(
    "/{fine_tuning_job_id}/pause",
    responses={409: {"description": "job_not_pausable: the job is being cancelled or already finished"}},
)
def pause_job(fine_tuning_job_id: str, session: SessionDep, tenant: TenantDep) -> FineTuningJob:
    """Pause a queued or running job (shows as running until it is saved and paused)."""
    return service.job_view(service.pause_job(session, tenant.id, fine_tuning_job_id))


@jobs_router.post(
    "/{fine_tuning_job_id}/resume",
    responses={409: {"description": "job_not_resumable: the job is still pausing, being cancelled or finished"}},
)
def resume_job(fine_tuning_job_id: str, session: SessionDep, tenant: TenantDep) -> FineTuningJob:
    """Resume a paused job from its latest checkpoint."""
    return service.job_view(service.resume_job(session, tenant.id, fine_tuning_job_id))


@jobs_router.get("/{fine_tuning_job_id}/events")
def list_events(
    fine_tuning_job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> ListPage[FineTuningJobEvent]:
    """A job's events, newest first (metrics events have type "metrics")."""
    job = service.get_job(session, tenant.id, fine_tuning_job_id)
    events, has_more = service.list_events(session, job, after=after, limit=limit)
    return ListPage[FineTuningJobEvent](**_page(events, has_more))


@jobs_router.get("/{fine_tuning_job_id}/checkpoints")
def list_checkpoints(
    fine_tuning_job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListPage[FineTuningJobCheckpoint]:
    """A job's checkpoints, highest step first; each downloads from GET /v1/checkpoints/{id}/download."""
    job = service.get_job(session, tenant.id, fine_tuning_job_id)
    checkpoints, has_more = service.list_checkpoints(session, job, after=after, limit=limit)
    return ListPage[FineTuningJobCheckpoint](**_page(checkpoints, has_more))
