"""How do GRPO and PPO evaluate during training? Generate for held-out prompts, score them, report eval/.

Every `eval_every` steps and at the end (trainer.loop), the policy generates `eval_num_generations`
completions for each prompt of the eval file (greedy when `eval_temperature` is 0, the default; else
sampled with that temperature and the training top_p), in chunks of micro_batch prompts, and the
spec's reward scores them. The loop logs the results as `eval/reward` (mean), `eval/reward_std` (std
over all eval completions, not per group: greedy evaluation has one completion per prompt),
`eval/rewards/<component>`, `eval/completions/mean_length` (tokens) and
`eval/completions/clipped_ratio` (share that hit max_new_tokens without EOS). The first few
completions become `sample` events with `"split": "eval"` (training samples carry no split field).

Evaluation must not change training: generation runs under `torch.random.fork_rng`, seeded with the
run's seed, so the training random stream is restored afterwards (a run with evaluation trains exactly
as one without) and every evaluation draws the same noise (its results are comparable over steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainer.config import GRPOConfig, PPOConfig
from trainer.data import DataError, encode_prompt, read_dataset
from trainer.online import SAMPLES_PER_EVENT, Prompts, rollout, score
from trainer.rewards import Reward
from trainer.run import Run
from trainer.state import TrainState, chunks


def load_eval_prompts(run: Run, tokenizer: Any) -> Prompts | None:
    """The spec's eval file as encoded prompts (same truncation as the train prompts), or None without one."""
    if run.spec.eval_file is None:
        return None
    examples = read_dataset(run.spec.eval_file, "prompt", "eval")
    if not examples:
        raise DataError("the eval file has no prompts")
    ids = [encode_prompt(tokenizer, e.prompt, run.config.max_prompt_length) for e in examples]
    run.data_report["eval"] = {"rows": len(examples), "longest_prompt": max(len(p) for p in ids)}
    return Prompts(examples, ids)


def online_eval_fn(
    run: Run, policy: Any, tokenizer: Any, prompts: Prompts, reward: Reward, state: TrainState
) -> Callable[[], dict[str, float]]:
    """The loop's eval_fn for GRPO/PPO: metrics (without the eval/ prefix) of the policy on `prompts`."""
    config = run.config
    assert isinstance(config, GRPOConfig | PPOConfig)
    G = config.eval_num_generations
    cuda = [run.device.index or 0] if run.device.type == "cuda" else []

    def evaluate() -> dict[str, float]:
        totals: list[torch.Tensor] = []
        parts: dict[str, list[torch.Tensor]] = {}
        lengths: list[torch.Tensor] = []
        clipped: list[torch.Tensor] = []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(run.spec.seed)
            for chunk in chunks(list(range(len(prompts))), config.micro_batch):
                examples = [prompts.examples[i] for i in chunk]
                batch = rollout(
                    policy,
                    tokenizer,
                    [prompts.ids[i] for i in chunk],
                    num_generations=G,
                    max_new_tokens=config.max_new_tokens,
                    temperature=config.eval_temperature,
                    top_p=config.top_p,
                    device=run.device,
                )
                rewards, components = score(reward, examples, batch.completions, G)
                if not totals:
                    for i in range(min(SAMPLES_PER_EVENT, len(batch.completions))):
                        run.events.emit(
                            "sample",
                            step=state.step,
                            split="eval",
                            prompt=examples[i // G].prompt,
                            completion=batch.completions[i],
                            reward=rewards[i].item(),
                            rewards={name: values[i].item() for name, values in components.items()},
                        )
                totals.append(rewards.float().cpu())
                for name, values in components.items():
                    parts.setdefault(name, []).append(values.float().cpu())
                lengths.append(batch.completion_mask.sum(1).float().cpu())
                clipped.append((~batch.has_eos).float().cpu())
        total = torch.cat(totals)
        return {
            "reward": total.mean().item(),
            "reward_std": total.std(correction=0).item(),
            **{f"rewards/{name}": torch.cat(values).mean().item() for name, values in parts.items()},
            "completions/mean_length": torch.cat(lengths).mean().item(),
            "completions/clipped_ratio": torch.cat(clipped).mean().item(),
        }

    return evaluate
