"""The relay stores what the trainer writes, even text Postgres could not hold as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs.events import lock_job
from api.jobs.lifecycle import expire_lease
from api.jobs.models import JobEvent
from api.jobs.schemas import JobPublic
from tests.conftest import TenantKey
from tests.worker.conftest import add_dataset, add_job, checkpoints_of, job_row
from worker.relay import EventRelay
from worker.runner import claim


def test_nul_characters_and_non_finite_numbers_in_trainer_events_are_stored_as_postgres_can_hold_them(
    db: sessionmaker[Session], storage: Storage, worker_settings: Settings, tenant: TenantKey, tmp_path: Path
) -> None:
    # A sampled completion may hold any token, NUL included, and a metric can come out NaN; Postgres
    # jsonb refuses both "\u0000" and NaN, which failed the whole batch (DataError out of pump()).
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        job_id = add_job(session, tenant.id, dataset.id, "tiny").id
    attempt = claim(db, job_id, "w1", worker_settings)
    assert attempt is not None
    events = tmp_path / "events.jsonl"
    lines = [
        {"type": "sample", "step": 1, "prompt": "2+2?", "completion": "4\u0000\u0000", "reward": 1.0},
        {"type": "log", "level": "info", "message": "tokenizer said \u0000"},
        {"type": "metrics", "step": 1, "values": {"loss": 0.5, "kl": float("nan"), "reward_std": float("inf")}},
    ]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    relay = EventRelay(attempt, db, storage, events, batch_size=10)

    relay.pump()

    with db() as session:
        rows = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    by_type = {row.type: row.data for row in rows}
    assert by_type["sample"]["completion"] == "4\ufffd\ufffd"
    assert by_type["log"]["message"] == "tokenizer said \ufffd"
    assert by_type["metrics"] == {"step": 1, "values": {"loss": 0.5, "kl": None, "reward_std": None}}
    job = job_row(db, job_id)
    assert job.status == "running" and job.metrics == {"loss": 0.5, "kl": None, "reward_std": None}


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_sample_events_replayed_by_a_resumed_attempt_are_stored_once(
    db: sessionmaker[Session], storage: Storage, worker_settings: Settings, tenant: TenantKey, tmp_path: Path
) -> None:
    # Attempt 1 records both samples of steps 1-2 and only the first of step 3, then its worker dies.
    # Attempt 2 resumes from the checkpoint of step 2 and emits the samples of steps 3-4 again.
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        job_id = add_job(session, tenant.id, dataset.id, "tiny").id

    def sample(step: int, index: int, attempt: int) -> dict[str, object]:
        return {"type": "sample", "step": step, "prompt": f"p{index}", "completion": f"c{attempt}", "reward": 0.0}

    first = claim(db, job_id, "w1", worker_settings)
    assert first is not None
    events = tmp_path / "attempt-1.jsonl"
    lines = [sample(s, i, 1) for s in (1, 2) for i in (0, 1)] + [sample(3, 0, 1)]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    EventRelay(first, db, storage, events, batch_size=2).pump()
    with db() as session, session.begin():
        assert expire_lease(session, lock_job(session, job_id)) == "queued"

    second = claim(db, job_id, "w2", worker_settings)
    assert second is not None
    events = tmp_path / "attempt-2.jsonl"
    events.write_text("".join(json.dumps(sample(s, i, 2)) + "\n" for s in (3, 4) for i in (0, 1)))
    EventRelay(second, db, storage, events, batch_size=3).pump()

    with db() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "sample"))
        stored = [(row.data["step"], row.data["prompt"], row.data["completion"]) for row in rows]
    assert sorted(stored) == [
        (1, "p0", "c1"), (1, "p1", "c1"), (2, "p0", "c1"), (2, "p1", "c1"),
        (3, "p0", "c1"), (3, "p1", "c2"), (4, "p0", "c2"), (4, "p1", "c2"),
    ]  # fmt: skip


def _checkpoint_event(tmp_path: Path, step: int, kind: str, metrics: dict[str, float]) -> dict[str, object]:
    folder = tmp_path / f"{kind}-{step}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"step": step}))
    return {"type": "checkpoint", "step": step, "kind": kind, "path": str(folder), "metrics": metrics}


def test_the_relay_points_the_job_at_its_newest_best_checkpoint_with_the_metric_value_and_keeps_it_on_replay(
    db: sessionmaker[Session], storage: Storage, worker_settings: Settings, tenant: TenantKey, tmp_path: Path
) -> None:
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        hyper = {"eval_every": 2, "best_metric": "eval/loss", "best_metric_mode": "min"}
        job_id = add_job(session, tenant.id, dataset.id, "tiny", hyperparameters=hyper).id
    first = claim(db, job_id, "w1", worker_settings)
    assert first is not None
    first.workdir.mkdir(parents=True)  # the runner makes it; checkpoints are archived there
    events = tmp_path / "attempt-1.jsonl"
    losses = {2: 0.9, 4: 0.7, 6: 0.8}  # the trainer wrote best checkpoints at steps 2 and 4, not 6
    lines: list[dict[str, object]] = []
    for step, loss in losses.items():
        lines.append({"type": "metrics", "step": step, "values": {"eval/loss": loss}})
        if loss == min(v for s, v in losses.items() if s <= step):
            lines.append(_checkpoint_event(tmp_path, step, "best", {"loss": 1.0, "eval/loss": loss}))
    lines.append(_checkpoint_event(tmp_path, 4, "intermediate", {"eval/loss": 0.7}))
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    EventRelay(first, db, storage, events, batch_size=2).pump()

    rows = {(c.step, c.kind): c.id for c in checkpoints_of(db, job_id)}
    assert set(rows) == {(2, "best"), (4, "best"), (4, "intermediate")}
    job = job_row(db, job_id)
    assert job.best_checkpoint_id == rows[(4, "best")]
    assert job.best_metric == {"name": "eval/loss", "mode": "min", "value": 0.7, "step": 4}

    # A resumed attempt (from step 4) replays the evaluation of step 6 and then finishes: the best stays.
    with db() as session, session.begin():
        assert expire_lease(session, lock_job(session, job_id)) == "queued"
    second = claim(db, job_id, "w2", worker_settings)
    assert second is not None
    second.workdir.mkdir(parents=True)
    events = tmp_path / "attempt-2.jsonl"
    (tmp_path / "again").mkdir()
    replay = [_checkpoint_event(tmp_path / "again", 4, "best", {"eval/loss": 0.7})]
    replay += [_checkpoint_event(tmp_path, 6, "final", {"eval/loss": 0.8}), {"type": "done"}]
    events.write_text("".join(json.dumps(line) + "\n" for line in replay))
    EventRelay(second, db, storage, events, batch_size=10).pump()

    job = job_row(db, job_id)
    assert job.status == "succeeded"
    assert job.output_checkpoint_id == {(c.step, c.kind): c.id for c in checkpoints_of(db, job_id)}[(6, "final")]
    assert job.best_checkpoint_id == rows[(4, "best")]
    public = JobPublic.of(job)
    assert public.best_checkpoint_id == rows[(4, "best")]
    assert public.best_metric is not None and (public.best_metric.value, public.best_metric.step) == (0.7, 4)
