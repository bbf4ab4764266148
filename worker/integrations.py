"""Reporting a job to experiment trackers (Weights & Biases, MLflow), from the worker, never the trainer.

A job's `integrations` (JobCreate) name the trackers. The runner opens them before it spawns the
trainer (`Reporters.start`): a tracker whose package is not installed on this worker
(`pip install 'alignd[integrations]'`) or that has no server configured fails the job at once with
`integration_unavailable`, before any training. The relay (worker/relay.py) then feeds the reporters
what it committed to the database: each metrics event (values by step; a value a resumed attempt
replays is not sent twice, the relay drops it first) and each checkpoint (step, kind, sha256, id).
The runner closes them with the job's final status.

Credentials are the operator's, never the job's: W&B's API key and server come from
ALIGND_WANDB_API_KEY / ALIGND_WANDB_BASE_URL (ALIGND_WANDB_MODE=offline writes runs under
ALIGND_WANDB_DIR only), MLflow's server from the job's http(s) tracking_uri or ALIGND_MLFLOW_TRACKING_URI,
its credentials from the worker's MLFLOW_TRACKING_TOKEN / MLFLOW_TRACKING_USERNAME / _PASSWORD.

One job is one tracker run across its attempts: W&B's run id is the job id (resumed with
resume="allow"), MLflow's run is found again by its `alignd.job_id` tag. After a successful start a
tracker error is logged and that tracker is dropped; it never fails the training.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any, Protocol

from api.core.settings import Settings

logger = logging.getLogger(__name__)

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}
INSTALL_HINT = "install the optional extra on the workers: pip install 'alignd[integrations]'"


class IntegrationUnavailable(Exception):
    """A tracker the job asks for cannot be used on this worker (the message says why and what to do)."""


class JobInfo(Protocol):
    id: str
    name: str | None
    algorithm: str
    base_model: str
    dataset_id: str
    hyperparameters: dict[str, Any]
    integrations: list[Any] | None


class Reporter(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None: ...
    def checkpoint(self, step: int, kind: str, data: dict[str, Any]) -> None: ...
    def finish(self, status: str) -> None: ...


class Reporters:
    """Every tracker of one job attempt; a tracker that raises after its start is logged and dropped."""

    def __init__(self) -> None:
        self.reporters: dict[str, Reporter] = {}

    def start(self, job: JobInfo, settings: Settings) -> None:
        """Start a tracker run for each of the job's integrations; raises IntegrationUnavailable
        (after closing the runs it had started)."""
        for integration in job.integrations or []:
            kind = integration["type"]
            try:
                if importlib.util.find_spec(PACKAGES[kind]) is None:
                    raise IntegrationUnavailable(
                        f"this job reports to {kind}, but the {PACKAGES[kind]} package is not installed on the "
                        f"worker: {INSTALL_HINT}, or resubmit without the {kind} integration"
                    )
                opener = WandbReporter if kind == "wandb" else MlflowReporter
                try:
                    self.reporters[kind] = opener(job, integration[kind], settings)
                except IntegrationUnavailable:
                    raise
                except Exception as exc:
                    raise IntegrationUnavailable(f"could not start the {kind} run: {exc}") from exc
            except IntegrationUnavailable:
                self.finish("failed")
                raise

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if numbers:
            self._each("metrics", step, numbers)

    def checkpoint(self, step: int, kind: str, data: dict[str, Any]) -> None:
        self._each("checkpoint", step, kind, data)

    def finish(self, status: str) -> None:
        """Close every run with the job's status (succeeded, failed, cancelled; anything else: the
        attempt ended without a final status, e.g. the job was taken away)."""
        self._each("finish", status)
        self.reporters.clear()

    def _each(self, method: str, *args: Any) -> None:
        for name, reporter in list(self.reporters.items()):
            try:
                getattr(reporter, method)(*args)
            except Exception:
                logger.exception("%s reporting failed; no more reports go to %s for this attempt", name, name)
                self.reporters.pop(name, None)


def _config(job: JobInfo) -> dict[str, Any]:
    return {
        "alignd.job_id": job.id,
        "algorithm": job.algorithm,
        "base_model": job.base_model,
        "dataset_id": job.dataset_id,
        **{f"hyperparameters.{k}": v for k, v in (job.hyperparameters or {}).items()},
    }


class WandbReporter:
    """One W&B run per job (run id = job id)."""

    def __init__(self, job: JobInfo, options: dict[str, Any], settings: Settings) -> None:
        import wandb

        key = settings.wandb_api_key.get_secret_value() if settings.wandb_api_key else None
        if settings.wandb_mode == "online" and not key:
            raise IntegrationUnavailable(
                "this job reports to wandb, but the server has no W&B API key: the operator sets "
                "ALIGND_WANDB_API_KEY (or ALIGND_WANDB_MODE=offline)"
            )
        root = settings.wandb_dir or settings.resolved_work_dir / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        wandb_settings = wandb.Settings(
            mode=settings.wandb_mode,
            api_key=key,
            base_url=settings.wandb_base_url or "https://api.wandb.ai",
            root_dir=str(root),
            silent=True,
            console="off",
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
        )
        self.run = wandb.init(
            project=options["project"],
            entity=options.get("entity"),
            name=options.get("name") or job.name or job.id,
            tags=options.get("tags") or None,
            id=job.id,
            resume="allow",
            dir=str(root),
            config=_config(job),
            reinit="create_new",
            settings=wandb_settings,
        )

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def checkpoint(self, step: int, kind: str, data: dict[str, Any]) -> None:
        self.run.summary[f"checkpoint/{kind}"] = {"step": step, **data}

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "succeeded" else 1)


MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


class MlflowReporter:
    """One MLflow run per job, found again on a resumed attempt by its `alignd.job_id` tag."""

    def __init__(self, job: JobInfo, options: dict[str, Any], settings: Settings) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = options.get("tracking_uri") or settings.mlflow_tracking_uri
        if not uri:
            raise IntegrationUnavailable(
                "this job reports to mlflow, but names no tracking_uri and the server has no ALIGND_MLFLOW_TRACKING_URI"
            )
        self.client = MlflowClient(tracking_uri=uri)
        name = options["experiment"]
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`alignd.job_id` = '{job.id}'")
        if found:
            self.run_id = found[0].info.run_id
            return
        run = self.client.create_run(
            experiment_id, run_name=options.get("run_name") or job.name or job.id, tags={"alignd.job_id": job.id}
        )
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _config(job).items()]
        for start in range(0, len(params), 100):  # MLflow's log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def checkpoint(self, step: int, kind: str, data: dict[str, Any]) -> None:
        summary = " ".join(f"{k}={v}" for k, v in {"step": step, **data}.items())
        self.client.set_tag(self.run_id, f"alignd.checkpoint.{kind}", summary)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "KILLED"))
