"""Property-based fuzz of the whole OpenAPI schema (schemathesis) against a live `alignd serve` on Postgres.

Every operation of the served schema gets requests that schemathesis derives from it, valid and
invalid (boundary values, wrong types, unknown fields, NUL characters, huge integers, ...), sent over
HTTP to a real server process on Postgres with Redis as the broker. Each response must pass all of
schemathesis' checks: no 5xx, the status code, content type, headers and body are the ones the schema
declares, invalid data is refused, the API key is not ignored.

The server is seeded (a dataset of each kind, a reward model, a finished job with events, metrics and a
checkpoint, a pipeline), and path parameters (and a job's dataset_id, eval_dataset_id, reward_model_id) are drawn
either by schemathesis or from those seeded ids, so the id-based endpoints reach real objects and not
only the 404 path; DELETE gets objects of its own, so the others stay findable. A second tenant's key is
fuzzed where ids are sent too: for it, the first tenant's objects must never be found or used.

Left out of the checks: positive_data_acceptance (see EXCLUDED_CHECKS). Left out of the requests: a
generated Content-Length header (see map_headers). No operation is left out; the SSE stream is bounded by
the seeded job being finished (its stream ends) and by the request timeout.

The bounded run is part of `make test`; `make fuzz` runs many more cases (marker `fuzz_long`).
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from api.main import create_app
from tests.api.helpers import real_lines
from tests.services import free_port

ALIGND = str(Path(sys.executable).with_name("alignd"))
MODEL = "tiny-llama"

# Cases per operation (and per tenant): the bounded run keeps `make test` to a couple of minutes on a
# 2-core machine; `make fuzz` (ALIGND_FUZZ_LONG=1 pytest -m fuzz_long) runs the long one.
BOUNDED_EXAMPLES = int(os.environ.get("ALIGND_FUZZ_EXAMPLES", "50"))
LONG_EXAMPLES = int(os.environ.get("ALIGND_FUZZ_LONG_EXAMPLES", "1000"))

# The schema the server serves: built from the same code here, so that the tests can be collected before
# the server runs; `test_the_live_server_serves_the_fuzzed_schema` checks that the two are the same.
SERVED_SCHEMA = create_app().openapi()


def _without_prefix_items(node: Any) -> Any:
    """Tuples (`prefixItems`, e.g. the [step, value] pairs of /metrics) as arrays of their item types.

    schemathesis 4.32.5 rewrites `prefixItems` to the draft-7 `items: [...]` also for the response schemas it
    then validates as OpenAPI 3.1 (draft 2020-12), and reports the schema as invalid; this keeps the check
    (two numbers) without the keyword.
    """
    if isinstance(node, list):
        return [_without_prefix_items(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _without_prefix_items(v) for k, v in node.items() if k != "prefixItems"}
    if "prefixItems" in node:
        out["items"] = {"anyOf": _without_prefix_items(node["prefixItems"])}
    return out


SCHEMA = schemathesis.openapi.from_dict(_without_prefix_items(copy.deepcopy(SERVED_SCHEMA)))


@dataclass
class Seeds:
    """Ids of the objects the first tenant owns, by path parameter name."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    expendable: dict[str, list[str]] = field(default_factory=dict)
    """Objects for DELETE to remove, so that the other operations keep finding `ids` for the whole run."""

    def all(self) -> set[str]:
        return {i for pool in (self.ids, self.expendable) for ids in pool.values() for i in ids}


SEEDS = Seeds()


@SCHEMA.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> Any:
    """Half of the cases use a seeded id for each `*_id` path parameter, so real objects are reached."""
    pool = SEEDS.expendable if context.operation is not None and context.operation.method == "delete" else SEEDS.ids
    choices = [st.just(path_parameters)]
    for name in path_parameters or {}:
        if pool.get(name):
            choices.append(st.sampled_from(pool[name]).map(lambda v, n=name: {**path_parameters, n: v}))
    return st.one_of(*choices)


REFERENCE_FIELDS = {"dataset_id": "dataset_id", "eval_dataset_id": "dataset_id", "reward_model_id": "reward_model_id"}


COLUMNLESS_RULES = [
    {"type": "rule", "rule": "regex", "pattern": r"\d+", "weight": 1.0},
    {"type": "rule", "rule": "length", "target_length": 40, "length_mode": "max", "weight": 0.1},
]
"""Rules that read no dataset column, so that any schema-valid /score request is scored (200)."""


def _valid_core(body: dict[str, Any]) -> dict[str, Any] | None:
    """The parts of a create request that must name existing things, made valid; the fuzzed free-form
    fields (name, metadata, seed, hyperparameters, lora) stay, so they reach the database."""
    if "components" in body:  # POST /v1/reward-models
        return {"components": COLUMNLESS_RULES}
    if "algorithm" in body and "dataset_id" in body:  # POST /v1/jobs
        pairs = SEEDS.ids["dataset_id"][0]
        return {"algorithm": "dpo", "base_model": MODEL, "dataset_id": pairs, "eval_dataset_id": None}
    if "stages" in body:  # POST /v1/pipelines
        return {"stages": _two_stages()}
    return None


def _two_stages() -> list[dict[str, Any]]:
    """A valid pipeline: DPO on the seeded pairs, then DPO again on its output."""
    job = {"algorithm": "dpo", "dataset_id": SEEDS.ids["dataset_id"][0]}
    return [{"name": "a", "job": {**job, "base_model": MODEL}}, {"name": "b", "job": {**job, "base_model": "stage:a"}}]


@SCHEMA.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Half of the JSON bodies that reference objects (a job's dataset_id, ...) reference seeded ones, and a
    quarter of the create requests are otherwise valid, so that creation is reached, not only its 422s."""
    if not isinstance(body, dict) or not SEEDS.ids:
        return st.just(body)
    pools = {k: SEEDS.ids.get(pool, []) for k, pool in REFERENCE_FIELDS.items()} | {"base_model": [MODEL]}
    fields = {k: st.sampled_from(pools[k]) for k in body if pools.get(k)}
    choices = [st.just(body)]
    if fields:
        choices.append(st.fixed_dictionaries(fields).map(lambda ids: _rewritten({**body, **ids})))
    core = _valid_core(body)
    if core is not None:
        stripped = {k: v for k, v in body.items() if k not in ("reward", "reward_model_id")}
        choices.append(st.just(_rewritten({**stripped, **core})))
    return st.one_of(*choices)


REWRITTEN: set[str] = set()
"""Bodies flatmap_body rewrote. The hook cannot tell a negative case from a positive one, and the part it
replaced may have been the one a negative case broke on purpose: negative_data_rejection is not applied to
these (every other check is)."""


def _rewritten(body: dict[str, Any]) -> dict[str, Any]:
    REWRITTEN.add(json.dumps(body, sort_keys=True, default=str))
    return body


def _referenced_ids(case: schemathesis.Case) -> set[str]:
    ids = {str(v) for v in (case.path_parameters or {}).values()}
    if isinstance(case.body, dict):
        ids |= {str(case.body[k]) for k in REFERENCE_FIELDS if k in case.body}
    return ids


@SCHEMA.hook
def map_headers(context: schemathesis.HookContext, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """No generated Content-Length: one that does not match the body breaks the HTTP message itself, which
    uvicorn answers with a bare 400 before the application sees the request."""
    if headers:
        return {k: v for k, v in headers.items() if k.lower() != "content-length"}
    return headers


@dataclass
class LiveServer:
    url: str
    owner: dict[str, str]
    other: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"alignd serve exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"alignd serve not ready in {timeout}s:\n{log.read_text(errors='replace')}")


def _seed(url: str, headers: dict[str, str]) -> None:
    """Objects of every kind through the live API; a finished job with events and a checkpoint in the DB."""
    from api.checkpoints.models import Checkpoint
    from api.core.db import get_sessionmaker
    from api.core.storage import get_storage
    from api.jobs.events import append_events, lock_job
    from api.jobs.lifecycle import transition
    from tests.api.test_checkpoints import make_archive

    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:

        def upload(name: str, lines: int) -> str:
            resp = http.post("/v1/datasets", files={"file": (name, real_lines(name, lines))})
            assert resp.status_code == 201, resp.text
            return str(resp.json()["id"])

        pairs = upload("orca-dpo-pairs.openai-dpo.jsonl", 8)
        prompts = upload("gsm8k-train.jsonl", 8)
        sft = upload("gsm8k-openai-chat-sft.jsonl", 8)
        rules = [
            {"type": "rule", "rule": "exact_match", "weight": 1.0, "name": "correct"},
            {"type": "rule", "rule": "regex", "pattern": r"####\s*-?\d", "weight": 0.5, "name": "has_answer"},
        ]

        def reward_model(components: list[dict[str, Any]] = rules) -> str:
            resp = http.post("/v1/reward-models", json={"name": "gsm8k", "components": components})
            assert resp.status_code == 201, resp.text
            return str(resp.json()["id"])

        SEEDS.expendable = {
            "dataset_id": [upload("gsm8k-train.jsonl", 2), upload("orca-dpo-pairs.openai-dpo.jsonl", 2)],
            "reward_model_id": [reward_model()],
        }
        reward_model_ids = [reward_model(), reward_model(COLUMNLESS_RULES)]
        resp = http.post("/v1/jobs", json={"algorithm": "dpo", "base_model": MODEL, "dataset_id": pairs})
        assert resp.status_code == 201, resp.text
        job_id = resp.json()["id"]

    # Finish the job as a worker would (so its SSE stream ends): events, metrics, a final checkpoint.
    with get_sessionmaker()() as session:
        job = lock_job(session, job_id)
        tenant_id = job.tenant_id
        transition(session, job, "running")
        append_events(
            session,
            job,
            [
                ("metrics", {"step": 1, "values": {"loss": 0.69}}),
                ("log", {"level": "info", "message": "step 1"}),
                ("metrics", {"step": 2, "values": {"loss": 0.61}}),
            ],
        )
        folder = Path(os.environ["ALIGND_DATA_DIR"]) / "seed-checkpoint"
        folder.mkdir()
        key = f"checkpoints/{job_id}/final.tar"
        stored = get_storage().put_stream(key, io.BytesIO(make_archive(folder)))
        checkpoint = Checkpoint(
            tenant_id=tenant_id,
            job_id=job_id,
            step=2,
            kind="final",
            bytes=stored.bytes,
            sha256=stored.sha256,
            storage_key=key,
            metrics={"loss": 0.61},
        )
        session.add(checkpoint)
        session.flush()
        job.output_checkpoint_id = checkpoint.id
        transition(session, job, "succeeded")
        session.commit()
        checkpoint_id = checkpoint.id
    SEEDS.ids = {
        "dataset_id": [pairs, prompts, sft],
        "job_id": [job_id],
        "reward_model_id": reward_model_ids,
        "checkpoint_id": [checkpoint_id],
    }
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        resp = http.post("/v1/pipelines", json={"name": "seeded", "stages": _two_stages()})
        assert resp.status_code == 201, resp.text
    SEEDS.ids["pipeline_id"] = [resp.json()["id"]]


@pytest.fixture(scope="module")
def live_server(
    postgres_server_url: str, postgres_template: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """`alignd serve` on its own copy of the migrated Postgres database, Redis as broker, two tenants."""
    import sqlalchemy as sa

    from api.core import reset_caches
    from tests.conftest import make_tenant

    root = tmp_path_factory.mktemp("fuzz")
    name = f"fuzz_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    env = {
        "ALIGND_DATA_DIR": str(root / "data"),
        "ALIGND_DATABASE_URL": postgres_server_url.rsplit("/", 1)[0] + f"/{name}",
        "ALIGND_BROKER_URL": redis_url,
        "ALIGND_STORAGE_URL": f"file://{root / 'artifacts'}",
        "ALIGND_MODELS_DIR": str(root / "models"),
        "ALIGND_QUEUE": f"q_{uuid.uuid4().hex[:8]}",
    }
    (root / "data").mkdir()
    model = root / "models" / MODEL
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    port = free_port()
    log = root / "serve.log"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        reset_caches()
        owner, other = make_tenant("acme"), make_tenant("globex")
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [ALIGND, "serve", "--port", str(port), "--no-worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, log)
            _seed(url, owner.headers)
            server = LiveServer(url, owner.headers, other.headers, process, log)
            yield server
        finally:
            SEEDS.ids, SEEDS.expendable = {}, {}
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            print(f"--- alignd serve log ---\n{log.read_text(errors='replace')[-6000:]}")
            reset_caches()
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


# Every built-in check runs except positive_data_acceptance ("a schema-valid request gets 2xx"): here a
# schema-valid request may rightly be a 422, for what no schema can say: that dataset_id names an existing
# dataset of the right kind, that base_model resolves, that `after` is a cursor this API handed out.
EXCLUDED_CHECKS = [positive_data_acceptance]


def _check(case: schemathesis.Case, server: LiveServer, headers: dict[str, str]) -> None:
    if case.operation.schema.is_security_param_negated(case):
        headers = {}  # a negative case that leaves the API key out on purpose (must be 401)
    # The timeout bounds the SSE stream too (it ends by itself once the seeded job is finished).
    excluded = list(EXCLUDED_CHECKS)
    if isinstance(case.body, dict) and json.dumps(case.body, sort_keys=True, default=str) in REWRITTEN:
        excluded.append(negative_data_rejection)
    response = case.call_and_validate(base_url=server.url, headers=headers, excluded_checks=excluded, timeout=30)
    # The other tenant never finds or uses the first tenant's objects (same answer as for an id that does not exist).
    if headers is server.other and SEEDS.all() & _referenced_ids(case):
        # (400: a body that is not JSON is refused before the objects are looked up)
        assert response.status_code in (400, 401, 404, 422), f"{case.method} {case.formatted_path}: {response.text}"


BOUNDED = settings(
    max_examples=BOUNDED_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every CI run: a red build is reproducible
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_the_live_server_serves_the_fuzzed_schema(live_server: LiveServer) -> None:
    assert httpx.get(f"{live_server.url}/openapi.json").json() == SERVED_SCHEMA


@SCHEMA.parametrize()
@BOUNDED
@pytest.mark.parametrize("key", ["owner", "other"])
def test_every_operation_holds_under_fuzzing(case: schemathesis.Case, key: str, live_server: LiveServer) -> None:
    if key == "other" and not (
        case.operation.path_parameters or case.operation.label in ("POST /v1/jobs", "POST /v1/plan")
    ):
        pytest.skip("the second tenant is fuzzed where ids are sent (paths, a job's or a plan's references)")
    _check(case, live_server, live_server.owner if key == "owner" else live_server.other)


@pytest.mark.fuzz_long
@pytest.mark.skipif(not os.environ.get("ALIGND_FUZZ_LONG"), reason="the long fuzz runs with `make fuzz`")
@SCHEMA.parametrize()
@settings(max_examples=LONG_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@pytest.mark.parametrize("key", ["owner", "other"])
def test_every_operation_holds_under_long_fuzzing(case: schemathesis.Case, key: str, live_server: LiveServer) -> None:
    _check(case, live_server, live_server.owner if key == "owner" else live_server.other)
