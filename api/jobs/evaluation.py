"""What an `evaluate` job request must satisfy beyond a training job's checks (api/jobs/service.py).

An evaluate job is a normal job (same row, life cycle, worker, events) that scores its base model and
up to MAX_EVALUATED_MODELS candidates (`models`) on one dataset and writes metrics, no checkpoint:
- preference pairs: no reward; causal models get DPO implicit-reward accuracy/margins against the
  base model, reward models (sequence classifiers) accuracy/margin of r(chosen) - r(rejected);
- prompts: a reward (reward_model_id or inline components) scores the generated completions.
It trains nothing, so LoRA settings and a held-out eval dataset are refused rather than ignored.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.core.errors import InvalidRequest
from api.core.settings import Settings
from api.jobs.schemas import JobCreate
from api.models_dir import references


def check_options(body: JobCreate) -> None:
    """Refuse the training-only fields an evaluate job would otherwise silently ignore."""
    if body.lora is not None:
        raise InvalidRequest("evaluate trains nothing, so it takes no lora settings; leave lora out", param="lora")
    if body.eval_dataset_id is not None:
        raise InvalidRequest(
            "evaluate scores the models on dataset_id itself; leave eval_dataset_id out", param="eval_dataset_id"
        )
    if body.integrations:
        raise InvalidRequest(
            "evaluate reports its results on the job (results, metrics); experiment trackers are for training jobs",
            param="integrations",
        )


def check_models(session: Session, settings: Settings, tenant_id: str, body: JobCreate) -> list[str] | None:
    """The candidates, each a MODEL_REF this tenant may use, none repeated (nor the base model)."""
    if body.models is None:
        return None
    seen = {body.base_model.strip(): "base_model"}
    out = []
    for i, ref in enumerate(body.models):
        ref = ref.strip()
        param = f"models[{i}]"
        if ref in seen:
            raise InvalidRequest(f"{ref!r} is already evaluated as {seen[ref]}; give each model once", param=param)
        seen[ref] = param
        references.check(session, settings, tenant_id, ref, param)
        out.append(ref)
    return out
