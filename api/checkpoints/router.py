"""/v1/checkpoints: metadata and the archive download (Content-Length, sha256, Range)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from api.checkpoints import service
from api.checkpoints.schemas import CheckpointPublic
from api.deps import SessionDep, StorageDep, TenantDep

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])


@router.get("/{checkpoint_id}")
def get_checkpoint(checkpoint_id: str, session: SessionDep, tenant: TenantDep) -> CheckpointPublic:
    """Get a checkpoint."""
    return CheckpointPublic.model_validate(service.get_checkpoint(session, tenant.id, checkpoint_id))


@router.get(
    "/{checkpoint_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-tar": {}},
            "description": "A tar of the Hugging Face folder (files at its top level). Headers: Content-Length; "
            "X-Checkpoint-SHA256 (sha256 hex of the whole archive, also in the ETag); Accept-Ranges: bytes.",
        },
        206: {"description": "The requested byte range (Range: bytes=START-END), to resume a download."},
        416: {"description": "The range lies outside the archive."},
    },
)
def download_checkpoint(
    checkpoint_id: str,
    session: SessionDep,
    storage: StorageDep,
    tenant: TenantDep,
    range_: Annotated[str | None, Header(alias="Range")] = None,
) -> StreamingResponse:
    """Download a checkpoint archive."""
    checkpoint = service.get_checkpoint(session, tenant.id, checkpoint_id)
    session.close()  # hold no connection while the archive streams
    size = storage.size(checkpoint.storage_key)
    headers = {
        "Accept-Ranges": "bytes",
        "X-Checkpoint-SHA256": checkpoint.sha256,
        "ETag": f'"{checkpoint.sha256}"',
        "Content-Disposition": f'attachment; filename="{checkpoint.id}.tar"',
    }
    byte_range = service.parse_range(range_, size)
    if byte_range is None:
        headers["Content-Length"] = str(size)
        body = storage.iter_range(checkpoint.storage_key)
        return StreamingResponse(body, media_type="application/x-tar", headers=headers)
    start, end = byte_range
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    body = storage.iter_range(checkpoint.storage_key, start, end)
    return StreamingResponse(body, status_code=206, media_type="application/x-tar", headers=headers)
