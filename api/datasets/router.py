"""/v1/datasets: upload (multipart, streamed), pre-flight validate, list, get, preview rows (as stored, as
the trainer parses them, and as it renders them for a model), delete."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.core.errors import InvalidRequest
from api.core.pagination import AfterQuery, LimitQuery, Page, page_of
from api.core.uploads import stream_multipart
from api.datasets import preview, service
from api.datasets.schemas import DatasetExamples, DatasetPreview, DatasetPublic, DatasetRows, DatasetValidation
from api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from trainer.config import CommonConfig
from trainer.formats import RowError, parse_row

router = APIRouter(prefix="/datasets", tags=["datasets"])

NAME_MAX_CHARS = 300

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ".jsonl or .jsonl.gz"},
                        "name": {"type": "string", "maxLength": 300, "description": "Defaults to the file name."},
                        "format": {"type": "string", "description": "Declare the row format instead of detecting it."},
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "over the size limit, or a .jsonl.gz that decompresses past it or implausibly far"},
    422: {"description": "invalid rows (details per line)"},
}


async def _receive(request: Request, settings: SettingsDep) -> tuple[service.StagedUpload, dict[str, str], str | None]:
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
        raise service.UploadTooLarge(
            f"the request is larger than this server's limit of {settings.max_upload_bytes} bytes", param="file"
        )
    staged = service.StagedUpload(service.staging_dir(settings), settings.max_upload_bytes)
    try:
        form = await stream_multipart(request, "file", staged)
    except BaseException:
        staged.discard()
        raise
    if form.filename is None:
        staged.discard()
        raise service.DatasetInvalid("no file: send the dataset as the multipart field 'file'", param="file")
    # Postgres text cannot hold NUL; the name (or the file name it defaults to) is stored.
    for param, value in [*form.fields.items(), ("file", form.filename)]:
        if "\x00" in value:
            staged.discard()
            raise InvalidRequest(f"{param} must not contain NUL characters", param=param)
    if len(form.fields.get("name", "")) > NAME_MAX_CHARS:
        staged.discard()
        raise InvalidRequest(f"name: at most {NAME_MAX_CHARS} characters", param="name")
    return staged, form.fields, form.filename


@router.post("", status_code=201, openapi_extra=_UPLOAD_DOC, responses=_ERRORS)
async def upload_dataset(
    request: Request, session: SessionDep, storage: StorageDep, settings: SettingsDep, tenant: TenantDep
) -> DatasetPublic:
    """Upload a .jsonl or .jsonl.gz dataset."""
    staged, fields, filename = await _receive(request, settings)
    dataset = await run_in_threadpool(
        service.create_dataset,
        session,
        storage,
        tenant.id,
        staged,
        name=fields.get("name") or None,
        filename=filename,
        declared_format=fields.get("format") or None,
        limits=service.Limits.from_settings(settings),
    )
    return DatasetPublic.model_validate(dataset)


@router.post("/validate", openapi_extra=_UPLOAD_DOC, responses=_ERRORS)
async def validate_dataset(request: Request, settings: SettingsDep, tenant: TenantDep) -> DatasetValidation:
    """Check a dataset without storing it."""
    staged, fields, filename = await _receive(request, settings)
    result = await run_in_threadpool(
        service.check_upload,
        staged,
        filename,
        fields.get("format") or None,
        limits=service.Limits.from_settings(settings),
    )
    return DatasetValidation(
        kind=result.kind,
        format=result.format,
        rows=result.rows,
        bytes=staged.bytes,
        sha256=staged.sha256,
    )


@router.get("")
def list_datasets(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> Page[DatasetPublic]:
    """List datasets, newest first."""
    items, has_more = service.list_datasets(session, tenant.id, limit=limit, after=after)
    return page_of(items, has_more, DatasetPublic.model_validate)


@router.get("/{dataset_id}")
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    """Get a dataset."""
    return DatasetPublic.model_validate(service.get_dataset(session, tenant.id, dataset_id))


@router.get("/{dataset_id}/rows")
def preview_rows(
    dataset_id: str,
    session: SessionDep,
    storage: StorageDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0, le=service.MAX_ROWS)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> DatasetRows:
    """Preview rows of a dataset (422 for an offset past its last row)."""
    dataset = service.get_dataset(session, tenant.id, dataset_id)
    rows, has_more = service.preview_rows(storage, dataset, offset=offset, limit=limit)
    return DatasetRows(data=rows, offset=offset, has_more=has_more)


@router.get("/{dataset_id}/examples")
def preview_examples(
    dataset_id: str,
    session: SessionDep,
    storage: StorageDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0, le=service.MAX_ROWS)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> DatasetExamples:
    """Preview rows as the trainer parses them: prompt/chosen/rejected (or prompt/completion) split out."""
    dataset = service.get_dataset(session, tenant.id, dataset_id)
    rows, has_more = service.preview_rows(storage, dataset, offset=offset, limit=limit)
    examples = [_example(row, dataset.format) for row in rows]
    return DatasetExamples(data=examples, offset=offset, has_more=has_more)


@router.get(
    "/{dataset_id}/preview",
    responses={
        503: {"description": "`preview_busy`: the server's scoring/preview slots are all in use; retry later."},
        504: {"description": "`preview_timeout`: rendering ran past ALIGND_SCORE_TIMEOUT_SECONDS and was stopped."},
    },
)
async def preview_rendered(
    dataset_id: str,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    tenant: TenantDep,
    model: Annotated[str, Query(min_length=1, max_length=500, description="MODEL_REF whose tokenizer renders")],
    offset: Annotated[int, Query(ge=0, le=service.MAX_ROWS)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    max_length: Annotated[int, Query(ge=8, le=131072)] = CommonConfig.model_fields["max_length"].default,
    max_prompt_length: Annotated[int, Query(ge=1, le=131072)] = CommonConfig.model_fields["max_prompt_length"].default,
) -> DatasetPreview:
    """Preview rows as the trainer renders them for a model: chat template, token counts, truncation."""
    task, has_more = await run_in_threadpool(
        service.preview_task,
        session,
        storage,
        settings,
        tenant.id,
        dataset_id,
        model,
        offset=offset,
        limit=limit,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )
    rows = await preview.render_rows(task, settings)
    return DatasetPreview.model_validate(
        {
            "model": model,
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
            "data": rows,
            "offset": offset,
            "has_more": has_more,
        }
    )


def _example(row: Any, fmt: str) -> dict[str, Any]:
    try:
        return dataclasses.asdict(parse_row(row, fmt))
    except RowError as exc:  # stored under older rules than the trainer's current ones
        return {"error": {"field": exc.field, "message": exc.message}}


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={409: {"description": "a live job, or a pipeline stage not yet started, uses it"}},
)
def delete_dataset(dataset_id: str, session: SessionDep, storage: StorageDep, tenant: TenantDep) -> Response:
    """Delete a dataset (409 while a queued or running job uses it)."""
    service.delete_dataset(session, storage, tenant.id, dataset_id)
    return Response(status_code=204)
