"""Checkpoint archives that no checkpoint row names are swept once past their grace period.

A worker killed between uploading an archive (relay `_archive`: `storage.adopt`) and writing its row
leaves exactly what these tests plant: an object under checkpoints/<job>/ that nothing refers to.
"""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.checkpoints.models import Checkpoint
from api.checkpoints.service import sweep_orphan_archives
from api.core.db import utcnow
from api.core.settings import Settings
from api.core.storage import FileStorage, Storage
from tests.worker.conftest import add_dataset, add_job, wait_for
from worker.reaper import ReaperThread


def _archive(storage: Storage, key: str) -> None:
    storage.put_stream(key, io.BytesIO(b"a tar archive of a checkpoint folder" * 100))


def _job_with_checkpoint(db: sessionmaker[Session], storage: Storage, tenant_id: str) -> tuple[str, str]:
    """A job with one registered checkpoint archive; returns (job id, the archive's key)."""
    with db() as session:
        dataset = add_dataset(session, storage, tenant_id)
        job = add_job(session, tenant_id, dataset.id, "tiny")
        key = f"checkpoints/{job.id}/step-00000002-intermediate.tar"
        _archive(storage, key)
        session.add(
            Checkpoint(
                tenant_id=tenant_id, job_id=job.id, step=2, kind="intermediate", bytes=3600, sha256="0" * 64,
                storage_key=key, metrics=None,
            )
        )  # fmt: skip
        session.commit()
        return job.id, key


@pytest.mark.parametrize("store", ["file", "s3"])
def test_an_archive_without_a_row_is_deleted_once_older_than_the_cutoff_and_nothing_else_is(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    job_id, registered = _job_with_checkpoint(db, storage, tenant.id)
    orphan = f"checkpoints/{job_id}/step-00000004-intermediate.tar"  # uploaded, then the worker was killed
    _archive(storage, orphan)
    dataset_keys = [listed.key for listed in storage.list_objects("datasets")]
    time.sleep(2.1)  # S3 keeps whole seconds
    cutoff = (utcnow() - timedelta(seconds=1)).replace(microsecond=0)
    fresh = f"checkpoints/{job_id}/step-00000006-final.tar"  # a live worker between upload and row
    _archive(storage, fresh)

    with db() as session:
        deleted = sweep_orphan_archives(session, storage, cutoff)

    assert deleted == [orphan]
    assert not storage.exists(orphan)
    assert storage.exists(registered) and storage.exists(fresh)
    assert dataset_keys and all(storage.exists(key) for key in dataset_keys)  # only checkpoints/ is swept
    with db() as session:
        assert sweep_orphan_archives(session, storage, cutoff) == []  # a second sweeper finds nothing


def test_the_reaper_thread_sweeps_old_orphans_and_unfinished_uploads_at_start_up(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(storage, FileStorage)
    job_id, registered = _job_with_checkpoint(db, storage, tenant.id)
    orphan = f"checkpoints/{job_id}/step-00000004-intermediate.tar"
    part = f"checkpoints/{job_id}/.step-00000008-intermediate.tar.0123abcd.part"  # a write that never finished
    young = f"checkpoints/{job_id}/step-00000006-final.tar"
    for key in (orphan, part, young):
        _archive(storage, key)
    hours_ago = time.time() - 2 * 3600
    for key in (orphan, part, registered):
        os.utime(storage.root / key, (hours_ago, hours_ago))
    settings = worker_settings.model_copy(update={"orphan_grace_seconds": 3600.0, "orphan_sweep_seconds": 3600.0})

    reaper = ReaperThread(settings, lambda job_id: None)
    reaper.start()
    try:
        wait_for(lambda: not storage.exists(orphan) and not storage.exists(part), 30, "the orphans to be swept")
    finally:
        reaper.stop()
    assert storage.exists(registered) and storage.exists(young)
