"""Operational checks and numbers: readiness and the Prometheus metrics text."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.broker import broker_reachable
from api.core.db import utcnow
from api.datasets.models import Dataset
from api.jobs.models import FINAL_STATUSES, LIVE_STATUSES, Job

JOB_STATUSES = (*LIVE_STATUSES, *FINAL_STATUSES)


def readiness(session: Session) -> dict[str, str]:
    """{"database": "ok"|"unreachable", "broker": ...}."""
    checks = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    checks["broker"] = "ok" if broker_reachable() else "unreachable"
    return checks


def prometheus_text(session: Session) -> str:
    """The service's gauges in Prometheus text exposition format 0.0.4.

    Written by hand: these few gauges are computed from the database at scrape time (the database
    is shared by every API replica and worker, so in-process counters would be per-replica and
    wrong), and prometheus_client is not a dependency; the format is a handful of lines.
    """
    lines: list[str] = []

    def gauge(name: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")

    counts = {
        (s, a): n
        for s, a, n in session.execute(
            select(Job.status, Job.algorithm, func.count()).group_by(Job.status, Job.algorithm)
        )
    }
    algorithms = sorted({a for _, a in counts}) or []
    by_status = {s: sum(n for (st, _), n in counts.items() if st == s) for s in JOB_STATUSES}
    gauge("alignd_jobs", "Jobs by status.", [({"status": s}, by_status[s]) for s in JOB_STATUSES])
    gauge(
        "alignd_jobs_by_algorithm",
        "Jobs by status and algorithm.",
        [({"status": s, "algorithm": a}, counts.get((s, a), 0)) for s in JOB_STATUSES for a in algorithms],
    )
    oldest = session.execute(select(func.min(Job.created_at)).where(Job.status == "queued")).scalar()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=utcnow().tzinfo)
    gauge(
        "alignd_oldest_queued_job_age_seconds",
        "Age of the oldest queued job (0 when none): scale workers on it.",
        [({}, (utcnow() - oldest).total_seconds() if oldest else 0.0)],
    )
    n_datasets, dataset_bytes = session.execute(
        select(func.count(), func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.deleted_at.is_(None))
    ).one()
    gauge("alignd_datasets", "Stored datasets.", [({}, n_datasets)])
    gauge("alignd_dataset_bytes", "Bytes of stored datasets.", [({}, dataset_bytes)])
    n_ckpt, ckpt_bytes = session.execute(select(func.count(), func.coalesce(func.sum(Checkpoint.bytes), 0))).one()
    gauge("alignd_checkpoints", "Stored checkpoints.", [({}, n_ckpt)])
    gauge("alignd_checkpoint_bytes", "Bytes of stored checkpoint archives.", [({}, ckpt_bytes)])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
