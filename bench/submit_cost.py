"""What one job submission costs the API process: wall ms, CPU ms, Postgres statements and round trips.

Sequential and quiet, unlike bench/load.py: it starts its own Postgres and Redis (tests/services.py),
migrates, starts one API process (uvicorn, the code of `--repo`, default this checkout, so two
checkouts can be compared A/B against the same client), uploads a dataset, then POSTs `--jobs` job
submissions one after another (each with its own Idempotency-Key) and reports:

- wall ms per submission as the client saw it (p50, mean; loopback HTTP included);
- CPU ms per submission of the API process (utime + stime of all its threads, /proc, over the phase);
- with `--count N`, N more submissions with Postgres logging every statement (log_statement=all):
  what reached the server per submission, by kind (BEGIN, COMMIT, SELECT, INSERT, UPDATE, ...), and
  round trips (every logged statement is one: psycopg sends BEGIN and COMMIT on their own);
- with `--profile FILE`, a cProfile of the API process over the timed submissions (the event loop's
  thread and each submission's thread, merged) written as pstats to FILE.

With `--get N` it measures job reads instead: it submits one job, then sends N sequential
GET /v1/jobs/{id} over one kept-alive connection (http.client, so the client costs little) and
reports wall p50/p99 and the API process's CPU ms per GET; `--py-spy FILE` samples the API process
over the timed GETs (all threads, py-spy next to this Python) into FILE (speedscope JSON).

The machine's load average is printed beside the figures: CPU ms is the steadier figure on a shared box.
Sends the messages to Redis; no worker runs, so the jobs stay queued.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (all threads)


def serve(port: int, profile: str | None) -> None:
    """The API process (run with PYTHONPATH = the checkout measured). SIGUSR1 starts profiling the
    submissions, SIGUSR2 stops it and writes the stats."""
    import cProfile
    import pstats
    import threading

    import uvicorn

    from api.jobs import router as jobs_router
    from api.main import create_app

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    state = {"on": False, "loop": cProfile.Profile()}
    create = jobs_router._create_job

    def profiled(*args: Any, **kwargs: Any) -> Any:
        if not state["on"]:
            return create(*args, **kwargs)
        prof = cProfile.Profile()
        prof.enable()
        try:
            return create(*args, **kwargs)
        finally:
            prof.disable()
            with lock:
                profiles.append(prof)

    if profile:
        jobs_router._create_job = profiled  # type: ignore[assignment]

        def start(*_: Any) -> None:
            state["on"] = True
            state["loop"].enable()

        def stop(*_: Any) -> None:
            state["on"] = False
            state["loop"].disable()
            stats = pstats.Stats(state["loop"])
            with lock:
                for prof in profiles:
                    stats.add(prof)
            stats.dump_stats(profile)

        signal.signal(signal.SIGUSR1, start)
        signal.signal(signal.SIGUSR2, stop)
    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="warning")


def setup(url: str) -> None:
    """Migrate and create one tenant's key (with the measured checkout's code); prints the key."""
    from api.auth.service import create_key
    from api.core.db import get_sessionmaker
    from migrations.run import upgrade

    upgrade(url)
    with get_sessionmaker()() as session:
        print(create_key(session, "tenant-0")[1])


def _statements(log: Path, start: int) -> list[str]:
    """The statements Postgres logged after byte `start` of its log, as their first SQL word."""
    text = log.read_bytes()[start:].decode(errors="replace")
    found = []
    for match in re.finditer(r"LOG:\s+(?:statement|execute [^:]*):\s+(\S+)", text):
        found.append(match.group(1).upper())
    return found


def _commit(repo: Path) -> str:
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() or "?"


def _measure_gets(
    args: argparse.Namespace, repo: Path, api: subprocess.Popen, port: int, key: str, job_id: str
) -> dict[str, Any]:
    """`args.get` sequential job GETs over one kept-alive connection: wall and the API's CPU per GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}"}

    def get() -> float:
        t0 = time.perf_counter()
        conn.request("GET", f"/v1/jobs/{job_id}", headers=headers)
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - t0
        if response.status != 200:
            raise RuntimeError(f"GET: {response.status}")
        return elapsed

    for _ in range(args.warmup):
        get()
    spy = None
    if args.py_spy:
        py_spy = Path(sys.executable).parent / "py-spy"
        cmd = [str(py_spy), "record", "--pid", str(api.pid), "--format", "speedscope", "-o", args.py_spy]
        spy = subprocess.Popen([*cmd, "--rate", "500", "--nonblocking", "--gil"], stdout=subprocess.DEVNULL)
        time.sleep(1)
    load_before = os.getloadavg()[0]
    cpu0 = _cpu_seconds(api.pid)
    walls = sorted(get() for _ in range(args.get))
    cpu = _cpu_seconds(api.pid) - cpu0
    load_after = os.getloadavg()[0]
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    conn.close()
    return {
        "repo": str(repo),
        "commit": _commit(repo),
        "gets": args.get,
        "wall_ms_p50": round(statistics.median(walls) * 1000, 3),
        "wall_ms_p99": round(walls[int(len(walls) * 0.99)] * 1000, 3),
        "cpu_ms_per_get": round(cpu / args.get * 1000, 3),
        "load_average_1min": [load_before, load_after],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from tests.services import create_database, free_port, postgres_server, redis_server

    repo = Path(args.repo).resolve()
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alignd-submit-")))
        pg = create_database(stack.enter_context(postgres_server()), "alignd_submit")
        redis = stack.enter_context(redis_server())
        from tests.hub_cache import cached_hub_model

        cached_hub_model(root / "hub-cache", "org/hub-model")
        env = {
            **os.environ,
            "PYTHONPATH": str(repo),
            "HF_HUB_OFFLINE": "1",
            "ALIGND_DATABASE_URL": pg,
            "ALIGND_BROKER_URL": redis,
            "ALIGND_DATA_DIR": str(root / "data"),
            "ALIGND_STORAGE_URL": f"file://{root / 'artifacts'}",
            "ALIGND_MODELS_DIR": str(root / "models"),
            "ALIGND_HUB_CACHE_DIR": str(root / "hub-cache"),
        }
        me = str(Path(__file__).resolve())
        key = subprocess.run(
            [sys.executable, me, "--setup", pg], env=env, cwd=repo, check=True, capture_output=True, text=True
        ).stdout.split()[-1]
        port = free_port()
        cmd = [sys.executable, me, "--serve", str(port)] + (["--profile", args.profile] if args.profile else [])
        api = subprocess.Popen(cmd, env=env, cwd=repo)
        stack.callback(api.wait, 30)
        stack.callback(api.terminate)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as client:
            for _ in range(300):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            from tests.worker.conftest import short_preference_pairs

            r = client.post("/v1/datasets", files={"file": ("pairs.jsonl", short_preference_pairs(16))})
            r.raise_for_status()
            body = {
                "algorithm": "dpo",
                "base_model": "org/hub-model",
                "dataset_id": r.json()["id"],
                "hyperparameters": {"max_steps": 4, "save_every": 2},
            }

            def submit(i: int) -> float:
                t0 = time.perf_counter()
                r = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"submit-{i}"})
                elapsed = time.perf_counter() - t0
                if r.status_code != 201:
                    raise RuntimeError(f"submission {i}: {r.status_code} {r.text[:300]}")
                return elapsed

            if args.get:
                job_id = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "get"}).json()["id"]
                return _measure_gets(args, repo, api, port, key, job_id)
            for i in range(args.warmup):
                submit(-1 - i)
            if args.profile:
                api.send_signal(signal.SIGUSR1)
                time.sleep(0.2)
            load_before = os.getloadavg()[0]
            cpu0 = _cpu_seconds(api.pid)
            walls = [submit(i) for i in range(args.jobs)]
            cpu = _cpu_seconds(api.pid) - cpu0
            load_after = os.getloadavg()[0]
            if args.profile:
                api.send_signal(signal.SIGUSR2)
                time.sleep(1)
            result: dict[str, Any] = {
                "repo": str(repo),
                "commit": _commit(repo),
                "jobs": args.jobs,
                "wall_ms_p50": round(statistics.median(walls) * 1000, 2),
                "wall_ms_mean": round(statistics.fmean(walls) * 1000, 2),
                "cpu_ms_per_submission": round(cpu / args.jobs * 1000, 2),
                "load_average_1min": [load_before, load_after],
            }
            if args.count:
                engine_url = pg.replace("postgresql+psycopg", "postgresql")
                import sqlalchemy as sa

                admin = sa.create_engine(engine_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    datadir = Path(conn.execute(sa.text("SHOW data_directory")).scalar_one())
                    conn.execute(sa.text("ALTER SYSTEM SET log_statement = 'all'"))
                    conn.execute(sa.text("SELECT pg_reload_conf()"))
                admin.dispose()
                time.sleep(0.5)
                log = datadir.parent / "log"
                start = log.stat().st_size
                for i in range(args.count):
                    submit(args.jobs + i)
                time.sleep(0.5)  # Postgres writes its log asynchronously
                kinds = _statements(log, start)
                by_kind: dict[str, float] = {}
                for kind in kinds:
                    by_kind[kind] = by_kind.get(kind, 0) + 1 / args.count
                result["round_trips_per_submission"] = round(len(kinds) / args.count, 2)
                result["statements_by_kind"] = {k: round(v, 2) for k, v in sorted(by_kind.items())}
                if args.show_sql:
                    print(log.read_bytes()[start:].decode(errors="replace")[-args.show_sql :])
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose API is measured")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--count", type=int, default=20, help="submissions whose statements are counted (0: none)")
    parser.add_argument("--profile", help="write a cProfile (pstats) of the timed submissions here")
    parser.add_argument("--get", type=int, default=0, help="measure this many job GETs instead of submissions")
    parser.add_argument("--py-spy", help="with --get: py-spy's samples of the API over the GETs (speedscope JSON)")
    parser.add_argument("--show-sql", type=int, default=0, help="print this many last characters of the SQL log")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        setup(args.setup)
        return 0
    if args.serve:
        serve(args.serve, args.profile)
        return 0
    sys.path.insert(0, str(REPO))  # the client and the services come from this checkout
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
