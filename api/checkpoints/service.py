"""Checkpoints: read access and byte ranges of their archives (the worker writes them), and the sweep of
archives no row names."""

from __future__ import annotations

import re
from datetime import datetime
from itertools import islice

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.errors import AlignError, NotFound
from api.core.storage import Storage


class CheckpointNotFound(NotFound):
    pass


class RangeNotSatisfiable(AlignError):
    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message, param="Range", headers={"Content-Range": f"bytes */{size}"})


def get_checkpoint(session: Session, tenant_id: str, checkpoint_id: str) -> Checkpoint:
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or checkpoint.tenant_id != tenant_id:
        raise CheckpointNotFound(f"no checkpoint {checkpoint_id!r}", param="checkpoint_id")
    return checkpoint


def list_for_job(session: Session, job_id: str) -> list[Checkpoint]:
    return list(
        session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step, Checkpoint.kind)
        )
    )


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for by a Range header, or None for the whole file (RFC 9110 §14).

    One range only; a header we do not understand (another unit, several ranges) is ignored and the
    whole file is sent, as the RFC allows. An unsatisfiable range raises RangeNotSatisfiable (416).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header!r} is empty", size)
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"range {header!r} is outside the {size}-byte archive", size)
    return start, min(end, size - 1)


ARCHIVES = "checkpoints"
"""Where the worker stores checkpoint archives: checkpoints/<job id>/step-<step>-<kind>.tar."""


def sweep_orphan_archives(session: Session, storage: Storage, written_before: datetime) -> list[str]:
    """Delete every object under checkpoints/ written before `written_before` that no checkpoint row names.

    Such an archive was uploaded by a worker that died before it wrote the row (killed between the two
    on the job's last attempt), or its row went with a deleted job, or it is the temporary file of an
    upload that never finished. Nothing can ever download it. `written_before` leaves a grace period for
    a worker between its upload and its row. Returns the keys deleted.
    """
    old = (listed.key for listed in storage.list_objects(ARCHIVES) if listed.modified_at < written_before)
    deleted = []
    while batch := list(islice(old, 500)):
        named = set(session.scalars(select(Checkpoint.storage_key).where(Checkpoint.storage_key.in_(batch))))
        for key in batch:
            if key not in named:
                storage.delete(key)
                deleted.append(key)
    session.rollback()  # end the read transaction; nothing was written
    return deleted
