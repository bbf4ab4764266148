"""`make load`: many tenants submitting, listing and streaming at once against the real API on Postgres.

A bounded script (every phase has a deadline): it starts its own Postgres and Redis (tests/services.py),
migrates, starts the API (uvicorn, `--api-processes` processes) and real `alignd worker` processes with
`--workers` job slots in all (one process per slot, or `--worker-processes` processes sharing them),
running the fast fake trainer (tests/worker/fake_worker.py), then, with httpx:

- `--tenants` tenants each upload a dataset, then submit `--jobs` jobs in all, concurrently;
- `--streams` clients follow jobs' SSE event streams to their end, each then the next job it is given,
  so that many streams stay open for the whole run;
- `--pollers` clients GET /v1/jobs/{id} (the latency measured) and list /v1/jobs until every job ends.

It prints (and writes as JSON with --out) requests/s, p50/p95/p99 of job GETs, 5xx count, jobs/minute
and whether every job ran exactly once (one claim: status events queued, running, succeeded; attempt 1).
Job GET latency comes three ways, each also split into "while submitting" and "after": as the load
client saw it (its own event loop's lateness included: `client_loop_lag_p50_p99_ms`), as a light
prober in a process of its own saw it (`probe_job_get_*`), and by the API's own histogram
(`job_get_server_side*`, bucket bounds). On a machine the workers share, the prober's and the API's
figures are the API's; the load client's are mostly its own queueing.
Needs the test services' binaries (postgres, redis-server; `make services`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.services import create_database, free_port, postgres_server, redis_server  # noqa: E402

FINAL = {"succeeded", "failed", "cancelled"}


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors_5xx = 0
        self.transport_errors = 0
        self.streams_followed = 0
        self.job_get_ms: list[float] = []
        self.job_get_while_submitting_ms: list[float] = []
        """The job GETs answered before the last job was submitted (submissions, claims and streams all at once)."""
        self.load_average: list[float] = []
        self.client_lag_ms: list[float] = []
        """How late the load client's own event loop wakes from a 50 ms sleep: latency it adds to every figure."""
        """The machine's 1-minute load average, sampled every 5 s of the load phase."""

    def record(self, response: httpx.Response) -> None:
        self.requests += 1
        if response.status_code >= 500:
            self.errors_5xx += 1


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def start_processes(
    args: argparse.Namespace, env: dict[str, str], root: Path, port: int
) -> list[subprocess.Popen[bytes]]:
    procs = []
    api = [*_pinned(args.api_cpus), sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
    api += ["--port", str(port)]
    api += ["--workers", str(args.api_processes), "--log-level", "warning"]
    with open(root / "api.log", "wb") as log:
        procs.append(subprocess.Popen(api, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    # --workers job slots over --worker-processes `alignd worker` processes (each gets an equal share of
    # slots as fake GPUs, so its Celery pool runs that many jobs at once).
    processes = min(args.worker_processes or args.workers, args.workers)
    worker = [*_pinned(args.worker_cpus), "nice", "-n", str(args.worker_nice), sys.executable, "-m"]
    worker.append("tests.worker.fake_worker")
    for i in range(processes):
        slots = args.workers // processes + (i < args.workers % processes)
        worker_env = {**env, "ALIGND_WORKER_ID": f"load-{i}", "ALIGND_WORKER_GPUS": str(slots)}
        with open(root / f"worker-{i}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    worker,
                    cwd=REPO,
                    env=worker_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def _pinned(cpus: str | None) -> list[str]:
    """`taskset -c CPUS` before a command (its children inherit the CPUs), or nothing."""
    return ["taskset", "-c", cpus] if cpus else []


def _cpus(cpus: str) -> set[int]:
    """A `taskset -c` style list ("0", "0,1", "0-1") as a set of CPU numbers."""
    found: set[int] = set()
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


async def wait_healthy(client: httpx.AsyncClient, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError("the API did not become healthy in time")


async def run_load(args: argparse.Namespace, base_url: str, keys: list[str]) -> dict[str, Any]:
    stats = Stats()
    rng = random.Random(args.seed)
    # A connection for every stream, poller and in-flight submission (50) at once, and room to spare:
    # with fewer, job GETs wait in the client's pool behind submissions and their time is not the API's.
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would close them under a request.
    limits = httpx.Limits(
        max_connections=args.streams + args.pollers + 100, max_keepalive_connections=None, keepalive_expiry=4
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        await wait_healthy(client, time.monotonic() + 90)

        async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
            """One request; a connection the server closed (keep-alive race) is retried and counted.
            Job submissions carry an Idempotency-Key, so a retried POST creates one job."""
            for attempt in range(5):
                try:
                    r = await client.request(method, url, **kwargs)
                except httpx.TransportError:
                    stats.transport_errors += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                stats.record(r)
                return r
            raise RuntimeError(f"{method} {url}: no response after 5 tries")

        rows = _pairs()
        datasets = []
        for key in keys:
            files = {"file": ("pairs.jsonl", rows)}
            r = await call("POST", "/v1/datasets", files=files, headers=_auth(key))
            r.raise_for_status()
            datasets.append(r.json()["id"])

        jobs: list[tuple[str, str]] = []  # (job id, key)
        submit_started = time.monotonic()

        async def submit(i: int) -> None:
            t = i % len(keys)
            body = {
                "algorithm": "dpo",
                "base_model": "org/hub-model",
                "dataset_id": datasets[t],
                "hyperparameters": {"max_steps": args.steps, "save_every": max(1, args.steps // 2)},
            }
            headers = {**_auth(keys[t]), "Idempotency-Key": f"load-{args.seed}-{i}"}
            r = await call("POST", "/v1/jobs", json=body, headers=headers)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"submit failed: {r.status_code} {r.text[:300]}")
            jobs.append((r.json()["id"], keys[t]))

        semaphore = asyncio.Semaphore(50)
        submitted = asyncio.Event()
        deadline = time.monotonic() + args.deadline
        finished: dict[str, str] = {}

        async def bounded(i: int) -> None:
            async with semaphore:
                await submit(i)

        at_submitted: list[Histogram] = []
        submitted_at: list[float] = []

        async def submit_all() -> None:
            await asyncio.gather(*(bounded(i) for i in range(args.jobs)))
            submitted.set()
            submitted_at.append(time.time())
            at_submitted.append(await _server_job_get_histogram(base_url))

        async def probe() -> list[tuple[float, float]]:
            while not jobs and busy():
                await asyncio.sleep(0.05)
            if not jobs:
                return []
            context = multiprocessing.get_context("spawn")
            stop, results = context.Event(), context.Queue()
            probers = []
            for _ in range(args.probers):
                prober = context.Process(target=_probe, args=(base_url, *jobs[0], args.poll_interval, stop, results))
                prober.start()
                if args.probe_cpus and prober.pid is not None:
                    os.sched_setaffinity(prober.pid, _cpus(args.probe_cpus))
                if args.probe_realtime and prober.pid is not None:
                    # SCHED_FIFO: the prober runs the moment its answer arrives, as a client on a machine of
                    # its own would, instead of waiting behind the workers for its share of a saturated core.
                    os.sched_setscheduler(prober.pid, os.SCHED_FIFO, os.sched_param(args.probe_realtime))
                probers.append(prober)
            while busy():
                await asyncio.sleep(0.2)
            stop.set()
            samples: list[tuple[float, float]] = []
            for prober in probers:
                probed, errors_5xx = await asyncio.to_thread(results.get, True, 60)
                samples += probed
                stats.errors_5xx += errors_5xx
                stats.requests += len(probed)
                await asyncio.to_thread(prober.join, 10)
            return sorted(samples)

        async def lag() -> None:
            while busy():
                started = time.perf_counter()
                await asyncio.sleep(0.05)
                stats.client_lag_ms.append((time.perf_counter() - started) * 1000 - 50)

        def busy() -> bool:
            return (not submitted.is_set() or len(finished) < len(jobs)) and time.monotonic() < deadline

        async def stream(n: int) -> None:
            """One of `--streams` SSE clients open at once for the whole run: it follows the n-th job
            submitted from submission to its end, then the (n + streams)-th, and so on."""
            while busy():
                while len(jobs) <= n and busy():
                    await asyncio.sleep(0.1)
                if len(jobs) <= n:
                    return
                await follow(*jobs[n])
                n += args.streams

        async def follow(job_id: str, key: str) -> None:
            while time.monotonic() < deadline:
                try:
                    url = f"/v1/jobs/{job_id}/events/stream"
                    async with client.stream("GET", url, headers=_auth(key), timeout=None) as r:
                        stats.record(r)
                        async for _ in r.aiter_lines():
                            pass
                        stats.streams_followed += 1
                        return  # the stream ends once the job is final
                except httpx.TransportError:
                    stats.transport_errors += 1
                    await asyncio.sleep(0.5)

        async def poll() -> None:
            while busy():
                if not jobs:
                    await asyncio.sleep(0.1)
                    continue
                job_id, key = rng.choice(jobs)
                started = time.perf_counter()
                try:
                    r = await client.get(f"/v1/jobs/{job_id}", headers=_auth(key))
                except httpx.TransportError:
                    stats.transport_errors += 1
                    continue
                elapsed_ms = (time.perf_counter() - started) * 1000
                stats.job_get_ms.append(elapsed_ms)
                if not submitted.is_set():
                    stats.job_get_while_submitting_ms.append(elapsed_ms)
                stats.record(r)
                if r.status_code == 200 and r.json()["status"] in FINAL:
                    finished[job_id] = r.json()["status"]
                if rng.random() < 0.1:
                    await call("GET", "/v1/jobs", params={"limit": 20}, headers=_auth(key))
                await asyncio.sleep(args.poll_interval)

        async def sweep() -> None:  # makes sure every job is looked at, not only the random ones
            while busy():
                for job_id, key in list(jobs):
                    if job_id in finished:
                        continue
                    r = await call("GET", f"/v1/jobs/{job_id}", headers=_auth(key))
                    if r.status_code == 200 and r.json()["status"] in FINAL:
                        finished[job_id] = r.json()["status"]
                stats.load_average.append(os.getloadavg()[0])
                print(f"{time.strftime('%H:%M:%S')} {len(finished)}/{len(jobs)} jobs final", file=sys.stderr)
                await asyncio.sleep(5)

        # Everything at once: submitting, streaming, polling and listing while the workers run jobs.
        streams = [stream(n) for n in range(args.streams)]
        probing = asyncio.create_task(probe())
        await asyncio.gather(submit_all(), *streams, *(poll() for _ in range(args.pollers)), sweep(), lag())
        probed = await probing
        total_seconds = time.monotonic() - submit_started
        at_end = await _server_job_get_histogram(base_url)

        # Exactly once: one claim per job (status events queued, running, succeeded; attempt 1).
        once, not_once = 0, []
        for job_id, key in jobs:
            r = await call("GET", f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=_auth(key))
            statuses = [e["data"]["status"] for e in r.json()["data"] if e["type"] == "status"]
            if statuses == ["queued", "running", "succeeded"]:
                once += 1
            else:
                not_once.append((job_id, statuses))

    return {
        "jobs": len(jobs),
        "succeeded": sum(1 for s in finished.values() if s == "succeeded"),
        "unfinished": len(jobs) - len(finished),
        "ran_exactly_once": once,
        "not_exactly_once": not_once[:10],
        "seconds": round(total_seconds, 1),
        "requests": stats.requests,
        "requests_per_second": round(stats.requests / total_seconds, 1),
        "job_get_count": len(stats.job_get_ms),
        "job_get_p50_ms": round(percentile(stats.job_get_ms, 50), 1),
        "job_get_p95_ms": round(percentile(stats.job_get_ms, 95), 1),
        "job_get_p99_ms": round(percentile(stats.job_get_ms, 99), 1),
        "job_get_mean_ms": round(statistics.fmean(stats.job_get_ms), 1) if stats.job_get_ms else None,
        "job_get_while_submitting_p50_p99_ms": [
            round(percentile(stats.job_get_while_submitting_ms, p), 1) for p in (50, 99)
        ],
        "job_get_server_side": _summary(at_end),
        "job_get_server_side_while_submitting": _summary(at_submitted[0]) if at_submitted else None,
        "job_get_server_side_after_submitting": _summary(at_end.minus(at_submitted[0])) if at_submitted else None,
        "probe_job_get_p50_p99_ms": [round(percentile([ms for _, ms in probed], p), 1) for p in (50, 99)],
        "probe_job_get_while_submitting_p50_p99_ms": [
            round(percentile([ms for t, ms in probed if submitted_at and t <= submitted_at[0]], p), 1) for p in (50, 99)
        ],
        "probe_job_get_after_submitting_p50_p99_ms": [
            round(percentile([ms for t, ms in probed if submitted_at and t > submitted_at[0]], p), 1) for p in (50, 99)
        ],
        "probe_job_gets": len(probed),
        "probe_job_get_p95_ms": round(percentile([ms for _, ms in probed], 95), 1),
        # every probe (seconds after the last submission: negative while submitting, ms), to pool runs
        "probe_samples": [[round(t - submitted_at[0], 3), round(ms, 2)] for t, ms in probed] if submitted_at else [],
        "client_loop_lag_p50_p99_ms": [round(percentile(stats.client_lag_ms, p), 1) for p in (50, 99)],
        "http_5xx": stats.errors_5xx,
        "transport_errors": stats.transport_errors,
        "streams_followed_to_the_end": stats.streams_followed,
        "jobs_per_minute": round(len(finished) / (total_seconds / 60), 1),
        "load_average_mean": round(statistics.fmean(stats.load_average), 1) if stats.load_average else None,
        "load_average_max": round(max(stats.load_average), 1) if stats.load_average else None,
    }


def _probe(base_url: str, job_id: str, key: str, interval: float, stop: Any, results: Any) -> None:
    """A second, light client in a process of its own: one kept-alive connection (http.client, no asyncio)
    getting one job every `interval` s. Its times are the API's as a client sees them, without the
    queueing of the main load client's busy event loop. Sends ([(time.time(), ms)], 5xx count) when
    `stop` is set."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    samples, errors_5xx = [], 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("GET", f"/v1/jobs/{job_id}", headers=_auth(key))
            response = conn.getresponse()
            response.read()
            if response.status >= 500:
                errors_5xx += 1
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
            continue
        samples.append((time.time(), (time.perf_counter() - started) * 1000))
        stop.wait(interval)
    results.put((samples, errors_5xx))


async def _server_job_get_histogram(base_url: str) -> Histogram:
    """The API's own view of GET /v1/jobs/{job_id} (request arrival to response headers, so without the
    load client's queueing): its Prometheus histogram (bucket bound -> requests up to it) summed over
    the API processes. Each scrape, on a new connection, reaches one process; its counts change only a
    little between scrapes a few ms apart, so the scrape with the most requests stands for each
    process's histogram, told apart by alignd_api_process_id (an API without it: by
    process_start_time_seconds, where processes started in the same 10 ms count as one; `processes`
    in the summary says how many were seen)."""
    per_process: dict[str, dict[float, float]] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as scraper:
        for _ in range(20):
            text = (await scraper.get("/metrics", headers={"Connection": "close"})).text
            start = re.search(r"^alignd_api_process_id (\S+)", text, re.M) or re.search(
                r"^process_start_time_seconds (\S+)", text, re.M
            )
            name = start.group(1) if start else ""
            buckets = {}
            for labels, value in re.findall(r"^alignd_http_request_duration_seconds_bucket\{(.*)\} (\S+)$", text, re.M):
                parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                if parsed.get("method") == "GET" and parsed.get("route") == "/v1/jobs/{job_id}":
                    buckets[float(parsed["le"])] = float(value)
            seen = per_process.get(name)
            if seen is None or buckets.get(float("inf"), 0) >= seen.get(float("inf"), 0):
                per_process[name] = buckets
    total: dict[float, float] = {}
    for buckets in per_process.values():
        for le, value in buckets.items():
            total[le] = total.get(le, 0.0) + value
    return Histogram(len(per_process), total)


class Histogram(NamedTuple):
    processes: int
    """API processes whose histograms were summed."""
    counts: dict[float, float]
    """Bucket bound (s) -> requests that took at most that long."""

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram(self.processes, {le: n - earlier.counts.get(le, 0.0) for le, n in self.counts.items()})


def _summary(h: Histogram) -> dict[str, Any]:
    """Requests, p50 and p99 as the histogram's bucket bounds, and the share under 50 ms."""
    histogram, processes = h.counts, h.processes
    n = histogram.get(float("inf"), 0.0)

    def upper_bound(p: float) -> str:  # the smallest bucket bound that holds p% of the requests
        for le in sorted(histogram):
            if histogram[le] >= p / 100 * n:
                return f"<= {le * 1000:g} ms" if le != float("inf") else "> the largest bucket"
        return "no data"

    return {
        "processes": int(processes),
        "requests": int(n),
        "p50": upper_bound(50),
        "p99": upper_bound(99),
        "under_50ms": round(histogram.get(0.05, 0.0) / n, 4) if n else None,
    }


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _pairs() -> bytes:
    from tests.worker.conftest import short_preference_pairs

    return short_preference_pairs(16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=20, help="jobs run at once (worker job slots)")
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=0,
        help="`alignd worker` processes the slots are spread over (0: one per slot, as in a fleet of 1-GPU "
        "workers; 1: one worker process with --workers slots, which leaves a small machine's CPUs to the API)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="niceness of the worker processes and their trainers (10: the API, Postgres and the load client "
        "come first on a machine they share with the workers, as if the workers had machines of their own)",
    )
    parser.add_argument("--client-cpus", help="CPUs the load client runs on")
    parser.add_argument("--probe-cpus", help="CPUs the prober runs on (default: the load client's)")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="niceness of the load client (e.g. -10, root: it offers its load on a core it shares with the "
        "workers, as a client on a machine of its own would; 0: unchanged)",
    )
    parser.add_argument(
        "--probe-realtime",
        type=int,
        default=0,
        help="SCHED_FIFO priority of the prober (root; e.g. 10): its clock then holds the API's latency, not "
        "its own wait for a core the workers saturate (0: normal scheduling)",
    )
    parser.add_argument(
        "--probers",
        type=int,
        default=1,
        help="prober processes, each one job GET every --poll-interval on its own connection (e.g. 20: the "
        "20 pollers' rate, 400 GET/s at 50 ms, offered by light processes instead of the load client's loop)",
    )
    parser.add_argument(
        "--server-cpus",
        help="CPUs Postgres and Redis run on (e.g. 0: beside the API, off the workers' core, as on a database "
        "host of their own); default: any",
    )
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--api-cpus", help="CPUs the API processes run on (`taskset -c` list, e.g. 0); default: any")
    parser.add_argument(
        "--worker-cpus",
        help="CPUs the workers and their trainers run on (e.g. 1: with --api-cpus 0, the API has a core the "
        "workers never take, as when they run on machines of their own); default: any",
    )
    parser.add_argument("--steps", type=int, default=4, help="fake trainer steps per job")
    parser.add_argument("--deadline", type=float, default=900, help="seconds the load phase may last")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alignd-load-")))
        # Every worker holds a few connections (reaper, heartbeat, relay) and each API process a pool.
        everywhere = os.sched_getaffinity(0)
        if args.server_cpus:  # Postgres and Redis inherit the CPUs they start on
            os.sched_setaffinity(0, _cpus(args.server_cpus))
        pg = create_database(stack.enter_context(postgres_server("-c max_connections=400")), "alignd_load")
        redis = stack.enter_context(redis_server())
        os.sched_setaffinity(0, everywhere)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "ALIGND_DATABASE_URL": pg,
            "ALIGND_BROKER_URL": redis,
            "ALIGND_DATA_DIR": str(root / "data"),
            "ALIGND_STORAGE_URL": f"file://{root / 'artifacts'}",
            "ALIGND_MODELS_DIR": str(root / "models"),
            "ALIGND_HUB_CACHE_DIR": str(root / "hub-cache"),
            "ALIGND_HEARTBEAT_SECONDS": "5",
            "ALIGND_LEASE_SECONDS": "60",
            "ALIGND_REAP_INTERVAL_SECONDS": "10",
            "FAKE_STEP_SECONDS": "0.01",
        }
        os.environ.update(env)
        from api.auth.service import create_key
        from api.core import reset_caches
        from api.core.db import get_sessionmaker
        from migrations.run import upgrade
        from tests.hub_cache import cached_hub_model

        reset_caches()
        upgrade(pg)
        cached_hub_model(root / "hub-cache", "org/hub-model")
        with get_sessionmaker()() as session:
            keys = [create_key(session, f"tenant-{i}")[1] for i in range(args.tenants)]
        port = free_port()
        procs = start_processes(args, env, root, port)
        if args.client_cpus:  # after Postgres and Redis started: they keep --server-cpus (default: any)
            os.sched_setaffinity(0, _cpus(args.client_cpus))
        if args.client_nice:  # after the API and the workers started: they keep their own niceness
            os.setpriority(os.PRIO_PROCESS, 0, args.client_nice)
        try:
            result = asyncio.run(run_load(args, f"http://127.0.0.1:{port}", keys))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            reset_caches()
            if args.out:  # keep the servers' logs beside the figures
                logs = args.out.parent / "load-logs"
                logs.mkdir(parents=True, exist_ok=True)
                for log in root.glob("*.log"):
                    (logs / log.name).write_bytes(log.read_bytes())
    result["parameters"] = {k: v for k, v in vars(args).items() if k != "out"}
    result["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(json.dumps({k: v for k, v in result.items() if k != "probe_samples"}, indent=2))
    if args.out:
        # compact: probe_samples holds one pair per probe (~67,000 with --probers 20), 2.6 MB indented
        args.out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    ok = result["http_5xx"] == 0 and result["unfinished"] == 0 and result["ran_exactly_once"] == result["jobs"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
