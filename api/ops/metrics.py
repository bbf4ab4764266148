"""Prometheus metrics through prometheus_client: per-process HTTP histograms and gauges read from the database.

Two kinds of numbers, and why it matters with several API replicas (or `uvicorn --workers N`):

- Per process: `alignd_http_request_duration_seconds` (histogram) and `alignd_http_requests_total`
  (counter) by method and route, and prometheus_client's process/platform/gc collectors. Each API
  process counts only the requests it served, so Prometheus must scrape every process (one process
  per container, each a scrape target) and aggregate with `sum by (route) (rate(...))`.
- From the database, at scrape time (`DatabaseCollector`): job counts, queue, running attempts,
  per-running-job step rate and step age, relay lag, stored datasets and checkpoints. The database
  is shared by every replica and worker, so every replica reports the same values: aggregate them
  with `max` (never `sum`), or scrape one replica for them. A scrape runs five aggregate queries;
  the per-job rows are the held (running/cancelling) jobs only, which the worker slots bound.

The route label is the route's path template (`/v1/jobs/{job_id}`), never the raw path, so ids do
not multiply the series; a request no route matched is counted under `route="<unmatched>"`.
The duration is the time until the response headers were sent: a stream (SSE events, a checkpoint
download) is measured to its first byte, not to its end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.checkpoints.models import Checkpoint
from api.core.db import utcnow
from api.datasets.models import Dataset
from api.jobs.lifecycle import HELD_STATUSES
from api.jobs.models import FINAL_STATUSES, LIVE_STATUSES, Job

JOB_STATUSES = (*LIVE_STATUSES, *FINAL_STATUSES)
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other a client invents counts as "other" (bounded label values)."""

HTTP_DURATION = Histogram(
    "alignd_http_request_duration_seconds",
    "Time from a request's arrival to its response headers, by route template (per API process).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
HTTP_REQUESTS = Counter(
    "alignd_http_requests",
    "Requests answered, by route template and status code (per API process).",
    ["method", "route", "status"],
)


class HttpMetrics:
    """ASGI middleware: observe each HTTP request's latency and status under its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "other"
        status = [500]  # an exception that escapes every handler ends as a 500

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                HTTP_DURATION.labels(method, route_of(scope)).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            HTTP_REQUESTS.labels(method, route_of(scope), str(status[0])).inc()


def route_of(scope: Scope) -> str:
    """The path template of the route that served the request, with the prefix it was included under.

    The router leaves the matched route (`scope["route"]`) and its path parameters on the shared scope;
    FastAPI may hand over the route as its router declared it (`/jobs/{job_id}`), without the prefix
    of `include_router` (`/v1`). The prefix is what the raw path has before the route's own part, the
    parameters rendered back in: static text, since the match was full."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if route is None or template is None:
        return UNMATCHED
    if not hasattr(route, "endpoint"):  # a Mount (the dashboard's static files): its prefix only
        return str(getattr(route, "path", "")) + "/{path}"
    params, convertors = scope.get("path_params") or {}, getattr(route, "param_convertors", {})
    try:
        own = template.format(**{k: convertors[k].to_string(v) if k in convertors else v for k, v in params.items()})
    except (KeyError, IndexError, ValueError, AssertionError):
        return str(template)
    path = str(scope.get("path", ""))
    return path[: -len(own)] + template if own and path.endswith(own) else str(template)


class DatabaseCollector(Collector):
    """Gauges computed from the database when Prometheus scrapes (the same from every replica)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterable[Metric]:
        session, now = self.session, utcnow()
        counts = {
            (s, a): n
            for s, a, n in session.execute(
                select(Job.status, Job.algorithm, func.count()).group_by(Job.status, Job.algorithm)
            )
        }
        algorithms = sorted({a for _, a in counts})
        by_status = GaugeMetricFamily("alignd_jobs", "Jobs by status.", labels=["status"])
        for status in JOB_STATUSES:
            by_status.add_metric([status], sum(n for (s, _), n in counts.items() if s == status))
        yield by_status
        by_algorithm = GaugeMetricFamily(
            "alignd_jobs_by_algorithm", "Jobs by status and algorithm.", labels=["status", "algorithm"]
        )
        for status in JOB_STATUSES:
            for algorithm in algorithms:
                by_algorithm.add_metric([status, algorithm], counts.get((status, algorithm), 0))
        yield by_algorithm

        depth, oldest = session.execute(
            select(func.count(), func.min(Job.created_at)).where(Job.status == "queued")
        ).one()
        yield GaugeMetricFamily("alignd_queue_depth", "Queued jobs waiting for a worker.", value=depth)
        yield GaugeMetricFamily(
            "alignd_oldest_queued_job_age_seconds",
            "Age of the oldest queued job (0 when none): scale workers on it.",
            value=_seconds(now, _aware(oldest)) if oldest is not None else 0.0,
        )

        held = session.execute(
            select(
                Job.id,
                Job.algorithm,
                Job.progress,
                Job.last_step_at,
                Job.steps_per_second,
                Job.relay_lag_seconds,
                Job.started_at,
            ).where(Job.status.in_(HELD_STATUSES))
        ).all()
        yield GaugeMetricFamily(
            "alignd_running_attempts", "Jobs a worker holds now (running, cancelling or pausing).", value=len(held)
        )
        yield from _per_job_gauges(held, now)

        n_datasets, dataset_bytes = session.execute(
            select(func.count(), func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.deleted_at.is_(None))
        ).one()
        yield GaugeMetricFamily("alignd_datasets", "Stored datasets.", value=n_datasets)
        yield GaugeMetricFamily("alignd_dataset_bytes", "Bytes of stored datasets.", value=dataset_bytes)
        n_ckpt, ckpt_bytes = session.execute(select(func.count(), func.coalesce(func.sum(Checkpoint.bytes), 0))).one()
        yield GaugeMetricFamily("alignd_checkpoints", "Stored checkpoints.", value=n_ckpt)
        yield GaugeMetricFamily("alignd_checkpoint_bytes", "Bytes of stored checkpoint archives.", value=ckpt_bytes)


def _per_job_gauges(held: Sequence[Any], now: datetime) -> Iterator[Metric]:
    labels = ["job_id", "algorithm"]
    step = GaugeMetricFamily("alignd_job_step", "Last step a held job reached.", labels=labels)
    rate = GaugeMetricFamily(
        "alignd_job_steps_per_second",
        "Steps per second of a held job over its last stretch of at least a second (absent before its second step).",
        labels=labels,
    )
    since = GaugeMetricFamily(
        "alignd_job_seconds_since_last_step",
        "Seconds since a held job last advanced a step, or since its attempt was claimed (stuck-job alert).",
        labels=labels,
    )
    lag = GaugeMetricFamily(
        "alignd_event_relay_lag_seconds",
        "Seconds between the trainer's last write to its events file and the relay's commit of it (newest batch).",
        labels=labels,
    )
    for job_id, algorithm, progress, last_step_at, steps_per_second, relay_lag, started_at in held:
        key = [job_id, algorithm]
        step.add_metric(key, int((progress or {}).get("step") or 0))
        clock = _aware(last_step_at or started_at)
        if clock is not None:
            since.add_metric(key, _seconds(now, clock))
        if steps_per_second is not None:
            rate.add_metric(key, steps_per_second)
        if relay_lag is not None:
            lag.add_metric(key, relay_lag)
    yield from (step, rate, since, lag)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=utcnow().tzinfo)
    return value


def _seconds(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


class _Collected(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


class _ProcessId(Collector):
    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "alignd_api_process_id",
            "The process id of the API process that answered this scrape: tells apart the processes behind one "
            "port (`uvicorn --workers N`), whose process_start_time_seconds may be equal.",
            value=os.getpid(),
        )


def exposition(session: Session) -> bytes:
    """The text exposition of one scrape: this process's metrics and the database's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(REGISTRY))
    registry.register(_ProcessId())
    registry.register(DatabaseCollector(session))
    return generate_latest(registry)
