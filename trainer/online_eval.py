"""How do GRPO and PPO evaluate during training? Generate for held-out prompts, score them, report eval/.

Every `eval_every` steps and at the end (trainer.loop), the policy generates `eval_num_generations`
completions for each prompt of the eval file (greedy when `eval_temperature` is 0, the default; else
sampled with that temperature and the training top_p), in chunks of micro_batch prompts, and the
spec's reward scores them. The loop logs the results as `eval/reward` (mean), `eval/reward_std` (std
over all eval completions, not per group: greedy evaluation has one completion per prompt),
`eval/rewards/<component>`, `eval/completions/mean_length` (tokens) and
`eval/completions/clipped_ratio` (share that hit max_new_tokens without EOS). The first few
completions become `sample` events with `"split": "eval"` (training samples carry no split field).

Several processes (`accelerate launch`): each generates and scores a contiguous share of the eval
prompts (`eval_share`), and the per-completion results are gathered in prompt order (`gather_rows`),
so every process returns the metrics one process would. Each completion samples with its own seed
(trainer.generation.row_seed of the eval prompt's index, counted negative to stay apart from the
training rows' positions), so what a prompt gets does not depend on its process or chunk.

Evaluation must not change training: it runs under `torch.random.fork_rng`, seeded with the run's
seed, so the training random stream is restored afterwards (a run with evaluation trains exactly as
one without); with the per-completion seeds every evaluation draws the same noise (its results are
comparable over steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainer.config import GRPOConfig, PPOConfig
from trainer.data import DataError, encode_prompt, read_dataset
from trainer.generation import row_seed
from trainer.online import SAMPLES_PER_EVENT, Prompts, gather, rollout, score
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
    acc = run.accelerator
    share = eval_share(len(prompts), acc.process_index, acc.num_processes)
    names = reward.names
    width = 3 + len(names)  # a row per completion: reward, each component, length, clipped

    def evaluate() -> dict[str, float]:
        rows: list[torch.Tensor] = []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(run.spec.seed)
            for chunk in chunks(list(share), config.micro_batch):
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
                    seeds=[row_seed(run.spec.seed, -1 - i, g) for i in chunk for g in range(G)],
                )
                rewards, components = score(reward, examples, batch.completions, G)
                if chunk[0] == 0:  # the first eval prompt's completions, on the main process
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
                columns = [rewards, *(components[name] for name in names)]
                columns += [batch.completion_mask.sum(1), ~batch.has_eos]
                rows.append(torch.stack([c.float().cpu() for c in columns], dim=1))  # (chunk * G, width)
        local = torch.cat(rows) if rows else torch.zeros(0, width)
        table = gather_rows(run, local, most=len(eval_share(len(prompts), 0, acc.num_processes)) * G)
        total, *parts, lengths, clipped = table.T.contiguous()  # (width, N): one column per metric
        return {
            "reward": total.mean().item(),
            "reward_std": total.std(correction=0).item(),
            **{f"rewards/{name}": values.mean().item() for name, values in zip(names, parts, strict=True)},
            "completions/mean_length": lengths.mean().item(),
            "completions/clipped_ratio": clipped.mean().item(),
        }

    return evaluate


def eval_share(count: int, process: int, processes: int) -> range:
    """The eval prompts `process` generates: a contiguous share of at most ceil(count / processes)."""
    size = -(-count // processes)
    return range(min(process * size, count), min((process + 1) * size, count))


def gather_rows(run: Run, local: torch.Tensor, most: int) -> torch.Tensor:
    """Every process's rows (at most `most` each) in process order, as one process would have them.

    Shares can be uneven (the last ones shorter, or empty) and a gather needs equal shapes: each process
    pads its rows to `most` with a column that marks the real ones, and the padding is dropped after.
    """
    if run.accelerator.num_processes == 1:
        return local
    padded = torch.zeros(most, local.shape[1] + 1)
    padded[: len(local), :-1], padded[: len(local), -1] = local, 1.0
    everything = gather(run, padded.to(run.device)).cpu()
    return everything[everything[:, -1] == 1.0, :-1]
