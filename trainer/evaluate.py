"""Evaluation: score the base model and candidate models on one dataset; nothing is trained or saved.

Reads top to bottom: which models -> which data (pairs, or prompts with a reward) -> for each model:
load -> score -> one `metrics` event (+ a few `sample` events) -> free it.

- Preference pairs, causal LM: summed completion log-probs of chosen and rejected
  (`trainer.dpo.concatenated_logps`), and the DPO implicit rewards beta * (log pi - log pi_ref) against
  the base model as the reference, through `trainer.dpo.pair_metrics`, the function the DPO trainer
  evaluates with: `eval/rewards/{accuracies,margins,chosen,rejected}`, `eval/loss`,
  `eval/logps/{chosen,rejected}`, plus `eval/logps/accuracy`, how often log p(chosen) > log p(rejected)
  (no reference needed). The base model scored against itself has implicit rewards of exactly 0.
- Preference pairs, sequence classifier (a reward job's output): r(chosen) and r(rejected) through
  `trainer.reward.pair_scores` / `pair_metrics`: `eval/accuracy`, `eval/margin`, `eval/loss`,
  `eval/rewards/{chosen,rejected}`.
- Prompts + reward spec: `num_generations` completions per prompt (`trainer.online.rollout`, seeded
  identically for every model so they see the same sampling noise), scored by the same reward
  components as GRPO/PPO (`trainer.rewards`): `eval/reward`, `eval/reward_std`,
  `eval/rewards/<component>`, `eval/completions/mean_length` (tokens), `eval/completions/clipped_ratio`.

Events: model k (1 = the base model, then `spec.models` in order) gets one `metrics` event with
`step = k` and `model = <its name>`, so the metric series of a job compares the models point by point;
`progress` counts models. Every metric is a mean over all rows (not over batches).
Departures from TRL's DPO eval: none in the formulas; the reference is always the base model.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from trainer.config import DPOConfig, EvalModel, EvaluateConfig, RewardConfig, TrainSpec
from trainer.data import DataError, encode_preferences, encode_prompt, read_dataset
from trainer.dpo import concatenated_logps
from trainer.dpo import pair_metrics as dpo_pair_metrics
from trainer.events import Events
from trainer.models import ModelKind, load_model, load_tokenizer, resolve_dtype
from trainer.online import rollout, score
from trainer.packing import pair_batch
from trainer.reward import pair_metrics as reward_pair_metrics
from trainer.reward import pair_scores
from trainer.rewards import Reward, RewardError, build_reward
from trainer.run import TrainError
from trainer.state import seed_everything

PREFIX = "eval/"

T = TypeVar("T")


def _batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def evaluate(spec: TrainSpec, config: EvaluateConfig, events: Events, device: torch.device) -> None:
    """Score every model of the spec on its data and emit one metrics event per model."""
    models = spec.models or [EvalModel(name="base_model", path=spec.base_model)]
    kinds = [model_kind(m.path) for m in models]
    events.emit("progress", step=0, total_steps=len(models))
    if spec.reward:
        results = _evaluate_prompts(spec, config, events, device, models, kinds)
    else:
        results = _evaluate_pairs(spec, config, events, device, models, kinds)
    for model, values in zip(models, results, strict=True):
        events.log(f"{model.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())))


def model_kind(path: str) -> ModelKind:
    """causal or seqcls, from the folder's config.json architectures (or a LoRA adapter's task type)."""
    folder = Path(path)
    if path.endswith(".gguf"):
        return "causal"
    adapter = folder / "adapter_config.json"
    if adapter.is_file() and not (folder / "config.json").is_file():
        task = json.loads(adapter.read_text()).get("task_type")
        return "seqcls" if task == "SEQ_CLS" else "causal"
    config = folder / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    return "seqcls" if any(a.endswith("ForSequenceClassification") for a in architectures) else "causal"


def _load(
    model: EvalModel, kind: ModelKind, tokenizer: Any, spec: TrainSpec, config: EvaluateConfig, device: Any
) -> Any:
    loaded: Any = load_model(
        model.path,
        kind,
        dtype=resolve_dtype(config.precision),
        pad_token_id=tokenizer.pad_token_id,
        trust_remote_code=spec.trust_remote_code,
    )
    return loaded.to(device).eval().requires_grad_(False)


def _release_memory() -> None:
    """After the caller dropped its model: give its memory back before the next model loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _report(events: Events, step: int, model: EvalModel, metrics: dict[str, float]) -> dict[str, float]:
    values = {PREFIX + name: value for name, value in metrics.items()}
    events.emit("metrics", step=step, model=model.name, values=values)
    events.emit("progress", step=step)
    return values


# --- preference pairs ----------------------------------------------------------------------------


def _evaluate_pairs(
    spec: TrainSpec,
    config: EvaluateConfig,
    events: Events,
    device: torch.device,
    models: list[EvalModel],
    kinds: list[ModelKind],
) -> list[dict[str, float]]:
    examples = read_dataset(spec.train_file, "preference", "eval")[: config.max_samples]
    if not examples:
        raise DataError("the dataset has no preference pairs")
    if "causal" in kinds and kinds[0] != "causal":
        raise TrainError(
            "invalid_models",
            "the base model is the reference of the DPO implicit rewards of causal models, but it is a "
            "sequence classifier: give a causal LM as base_model, or evaluate reward models only",
        )
    dpo = DPOConfig(beta=config.beta, loss_type=config.loss_type)
    reference: torch.Tensor | None = None
    results = []
    for step, (model, kind) in enumerate(zip(models, kinds, strict=True), start=1):
        tokenizer = load_tokenizer(model.path, trust_remote_code=spec.trust_remote_code)
        features = encode_preferences(examples, tokenizer, config.max_length, config.max_prompt_length, "eval").features
        network = _load(model, kind, tokenizer, spec, config, device)
        events.log(f"evaluating {model.name} ({kind}) on {len(features)} preference pairs")
        if kind == "seqcls":
            metrics = _reward_model_metrics(network, features, tokenizer.pad_token_id, config.batch_size, device)
        else:
            logps, lengths = _pair_logps(network, features, tokenizer.pad_token_id, config.batch_size, device)
            if reference is None:  # the base model (kinds[0] is causal here)
                reference = logps
            if reference.shape != logps.shape:
                raise TrainError(
                    "invalid_models",
                    f"{model.name} kept {logps.shape[0]} of the pairs after tokenising, the base model "
                    f"{reference.shape[0]}: give models that share the base model's tokenizer",
                )
            metrics = causal_pair_metrics(dpo, logps, lengths, reference)
        results.append(_report(events, step, model, metrics))
        del network
        _release_memory()
    return results


@torch.no_grad()
def _pair_logps(
    model: Any, features: Sequence[Any], pad_id: int, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) summed log-probs [chosen, rejected] and (N, 2) completion token counts of every pair."""
    logps, lengths = [], []
    for part in _batches(features, batch_size):
        batch = {k: v.to(device) for k, v in pair_batch(part, pad_id, False).items()}
        values, counts = concatenated_logps(model, batch)  # (2b,), (2b,)
        logps.append(torch.stack(values.float().chunk(2), dim=1).cpu())  # (b, 2)
        lengths.append(torch.stack(counts.chunk(2), dim=1).cpu())
    return torch.cat(logps), torch.cat(lengths)


def causal_pair_metrics(
    config: DPOConfig, logps: torch.Tensor, lengths: torch.Tensor, reference: torch.Tensor
) -> dict[str, float]:
    """The DPO trainer's eval metrics of all pairs at once, plus the log p(chosen) > log p(rejected) rate.

    logps, lengths, reference: (N, 2) [chosen, rejected].
    """
    policy = torch.cat([logps[:, 0], logps[:, 1]])  # (2N,): chosen rows first, as pair_metrics reads them
    token_counts = torch.cat([lengths[:, 0], lengths[:, 1]])
    _, metrics = dpo_pair_metrics(config, policy, token_counts, reference)
    metrics["logps/accuracy"] = (logps[:, 0] > logps[:, 1]).float().mean().item()
    return metrics


@torch.no_grad()
def _reward_model_metrics(
    model: Any, features: Sequence[Any], pad_id: int, batch_size: int, device: torch.device
) -> dict[str, float]:
    """The reward trainer's eval metrics (accuracy, margin, ...) of all pairs at once."""
    chosen, rejected, margins = [], [], []
    for part in _batches(features, batch_size):
        batch = {k: v.to(device) for k, v in pair_batch(part, pad_id, False).items()}
        c, r = pair_scores(model, batch)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
        margins.append(torch.tensor([f.margin or 0.0 for f in part]))
    has_margin = any(f.margin is not None for f in features)
    _, metrics = reward_pair_metrics(
        RewardConfig(), torch.cat(chosen), torch.cat(rejected), torch.cat(margins) if has_margin else None
    )
    return metrics


# --- prompts + reward ----------------------------------------------------------------------------


def _evaluate_prompts(
    spec: TrainSpec,
    config: EvaluateConfig,
    events: Events,
    device: torch.device,
    models: list[EvalModel],
    kinds: list[ModelKind],
) -> list[dict[str, float]]:
    examples = read_dataset(spec.train_file, "prompt", "eval")[: config.max_samples]
    if not examples:
        raise DataError("the dataset has no prompts")
    for model, kind in zip(models, kinds, strict=True):
        if kind != "causal":
            raise TrainError(
                "invalid_models",
                f"{model.name} is a sequence classifier: evaluating on prompts generates completions, which "
                "needs causal LMs (score a reward model on preference pairs instead)",
            )
    try:
        reward = build_reward(spec.reward or [], device=device, trust_remote_code=spec.trust_remote_code)
    except RewardError as exc:
        raise TrainError("reward_failed", str(exc)) from exc
    results = []
    for step, model in enumerate(models, start=1):
        tokenizer = load_tokenizer(model.path, trust_remote_code=spec.trust_remote_code)
        network = _load(model, "causal", tokenizer, spec, config, device)
        events.log(f"evaluating {model.name}: {len(examples)} prompts x {config.num_generations} completions")
        seed_everything(spec.seed)  # the same sampling noise for every model
        metrics, samples = _generate_and_score(network, tokenizer, examples, reward, config, device)
        for sample in samples:
            events.emit("sample", step=step, model=model.name, **sample)
        results.append(_report(events, step, model, metrics))
        del network
        _release_memory()
    return results


def _generate_and_score(
    model: Any, tokenizer: Any, examples: list[Any], reward: Reward, config: EvaluateConfig, device: torch.device
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Completions of every prompt, their rewards, and the first `samples_per_model` as samples."""
    totals, lengths, clipped = [], [], []
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in reward.names}
    samples: list[dict[str, Any]] = []
    g = config.num_generations
    for part in _batches(examples, config.batch_size):
        batch = rollout(
            model,
            tokenizer,
            [encode_prompt(tokenizer, e.prompt, config.max_prompt_length) for e in part],
            num_generations=g,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            device=device,
            do_sample=config.do_sample,
        )
        total, components = score(reward, part, batch.completions, g)  # (b * G,)
        totals.append(total)
        for name, values in components.items():
            parts[name].append(values)
        lengths.append(batch.completion_mask.sum(1).float().cpu())
        clipped.append((~batch.has_eos).float().cpu())
        for i in range(min(config.samples_per_model - len(samples), len(batch.completions))):
            samples.append(
                {
                    "prompt": part[i // g].prompt,
                    "completion": batch.completions[i],
                    "reward": total[i].item(),
                    "rewards": {name: values[i].item() for name, values in components.items()},
                }
            )
    rewards = torch.cat(totals)  # (N * G,)
    metrics = {
        "reward": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item(),
        **{f"rewards/{name}": torch.cat(values).mean().item() for name, values in parts.items()},
        "completions/mean_length": torch.cat(lengths).mean().item(),
        "completions/clipped_ratio": torch.cat(clipped).mean().item(),
    }
    return metrics, samples
