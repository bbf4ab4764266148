"""POST /v1/plan: what a client describes (strict, bounded) and what the planner answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from api.core.validation import RequestModel, SafeStr
from api.plan.estimate import GPUS
from trainer.config import Algorithm, LoraConfig, PPOConfig

GpuName = Literal["H100", "H200", "A100-80GB", "A100-40GB", "L40S", "L4", "A10G", "T4", "RTX 4090"]
assert set(GpuName.__args__) == set(GPUS)  # type: ignore[attr-defined]
Situation = Literal["preference_pairs", "reward_model", "verifiable_rules"]


class PlanHardware(RequestModel):
    kind: Literal["gpu", "cpu"] = "gpu"
    """GPUs of a known kind, or a CPU machine."""
    gpu: GpuName | None = None
    """The GPU kind (kind gpu): datasheet memory, throughput and bandwidth come from the planner's table."""
    count: int = Field(1, ge=1, le=64)
    """GPUs available (the offline algorithms split a step over them; GRPO and PPO use one)."""
    memory_gb: float | None = Field(None, gt=0, le=65536)
    """Memory in GiB: the CPU machine's RAM (required for kind cpu), or a GPU's if not the datasheet's."""
    flops: float | None = Field(None, gt=0, le=1e18)
    """Peak FLOP/s of the CPU; measured on the API host (a short matmul) when not given."""
    bandwidth_gbs: float | None = Field(None, gt=0, le=100_000)
    """Memory bandwidth in GB/s (CPU default 20; a GPU's comes from the table)."""
    efficiency: float = Field(0.4, gt=0, le=1)
    """Fraction of peak throughput and bandwidth a step reaches."""
    overhead_mb: int | None = Field(None, ge=0, le=1_000_000)
    """Memory in use before any model: default 1024 per GPU (CUDA context), the measured trainer baseline on CPU."""

    @model_validator(mode="after")
    def _complete(self) -> PlanHardware:
        if self.kind == "gpu" and self.gpu is None:
            raise ValueError(f"hardware.gpu is required for kind gpu: one of {', '.join(GPUS)}")
        if self.kind == "cpu" and self.memory_gb is None:
            raise ValueError("hardware.memory_gb is required for kind cpu (the machine's RAM in GiB)")
        if self.kind == "cpu" and (self.gpu is not None or self.count != 1):
            raise ValueError("hardware.gpu and hardware.count describe GPUs; leave them out for kind cpu")
        return self


class PlanRequest(RequestModel):
    base_model: SafeStr = Field(min_length=1, max_length=500)
    """A name from GET /v1/models or a hub id whose config.json is in the server's hub cache."""
    algorithms: list[Algorithm] = Field(min_length=1, max_length=5)
    """Which algorithms to plan (each at most once)."""
    lora: LoraConfig | None = None
    """LoRA settings as in a job (r and target_modules matter here), or null for full fine-tuning."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """Parameter and compute precision."""
    max_length: int = Field(1024, ge=8, le=131072)
    """Longest sequence (prompt + completion) of the offline algorithms."""
    max_prompt_length: int = Field(512, ge=1, le=131072)
    """Longest prompt."""
    max_new_tokens: int = Field(128, ge=1, le=32768)
    """Longest sampled completion (grpo, ppo)."""
    batch_size: int = Field(8, ge=1, le=8192)
    """Pairs, rows or prompts per optimizer step."""
    micro_batch_size: int | None = Field(None, ge=1, le=8192)
    """Per forward/backward pass (defaults to batch_size)."""
    num_generations: int = Field(8, ge=2, le=1024)
    """Completions per prompt (grpo)."""
    gradient_checkpointing: bool | Literal["auto"] | None = None
    """Recompute activations in backward (less memory, ~1/3 more compute); default: as a job's (auto for
    dpo/reward/sft: only when a micro-batch's activations would take over half the free memory; off for
    grpo/ppo)."""
    padding_free: bool = False
    """dpo/reward/sft: pack each micro-batch into one row (as a job's padding_free)."""
    max_tokens_per_batch: int | None = Field(None, ge=16, le=1_048_576)
    """dpo/reward/sft: token budget of one forward/backward pass (as a job's max_tokens_per_batch)."""
    precompute_ref_logps: bool = True
    """DPO: reference log-probs computed once before training (no reference model in memory)."""
    value_model: Literal["head", "separate"] = "head"
    """PPO: a value head on the policy, or a separate value model."""
    ppo_epochs: int = Field(PPOConfig.model_fields["ppo_epochs"].default, ge=1, le=100)
    """PPO: passes over each rollout batch (the trainer's default)."""
    reward_models: list[SafeStr] = Field(default_factory=list, max_length=8)
    """Reward models (model references) grpo/ppo keep in memory; when empty, one of the base model's size
    is assumed unless `data` is verifiable_rules (rules only)."""
    dataset_id: SafeStr | None = Field(None, min_length=1, max_length=64)
    """One of your datasets: plan at the token lengths its rows have through base_model's tokenizer (the
    longest prompt and completion, capped by max_prompt_length / max_length; at most 2,000 rows measured,
    a seeded sample of larger datasets) instead of every sequence at the caps."""
    data: Situation | None = None
    """What the user has: preference pairs only, a reward model, or verifiable rules; drives the recommendation."""
    hardware: PlanHardware

    @model_validator(mode="after")
    def _consistent(self) -> PlanRequest:
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("algorithms: name each algorithm once")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError("batch_size must be a multiple of micro_batch_size")
        return self


class ModelSummary(BaseModel):
    ref: str
    model_type: str
    params: int
    hidden_size: int
    num_layers: int
    vocab_size: int


class HardwareSummary(BaseModel):
    kind: str
    name: str
    count: int
    memory_bytes: int
    """Per device."""
    flops: float
    """Peak FLOP/s of one device at the requested precision."""
    bandwidth_bytes: float
    overhead_bytes: int
    efficiency: float


class ModelInMemory(BaseModel):
    role: str
    """policy, reference, reward model N, value, ..."""
    kind: str
    """How it is held: trained in full, LoRA, a frozen copy, precomputed (no model), ..."""
    params: int
    trainable_params: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    """AdamW's two states per trainable parameter."""


class MemoryBreakdown(BaseModel):
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    """At the requested micro-batch and gradient_checkpointing setting."""
    activations_with_checkpointing_bytes: int
    activations_without_checkpointing_bytes: int
    logits_bytes: int
    """Log-probs of a training pass: dpo/sft one chunk of fp32 logits (the vocabulary head runs on a few
    hundred tokens at a time) and the completion hidden states; grpo/ppo the B x Tn x V fp32 logits, their
    gradient and the gather's."""
    kv_cache_bytes: int
    """Generation KV cache of the whole batch (grpo, ppo)."""
    overhead_bytes: int
    peak_bytes: int
    """Overhead + weights + gradients + optimizer + the largest of (activations + logits, KV cache, a no-grad pass)."""
    available_bytes: int
    """Memory of one device."""


class StepTime(BaseModel):
    flops_per_step: float
    compute_seconds: float
    generation_seconds: float
    seconds_per_step: float
    efficiency: float


class AlgorithmPlan(BaseModel):
    algorithm: str
    models: list[ModelInMemory]
    memory: MemoryBreakdown
    fits: bool
    micro_batch_size: int
    gradient_checkpointing: bool
    """In effect: as asked, else the trainer's default for the algorithm (auto: what its rule picks for a
    micro-batch of max_length sequences)."""
    largest_micro_batch_size: int | None
    """Largest divisor of batch_size that fits as asked (null: not even 1)."""
    largest_micro_batch_size_with_checkpointing: int | None
    time: StepTime
    notes: list[str]


class Recommendation(BaseModel):
    algorithm: str | None
    """The algorithm to run (null: nothing planned fits)."""
    text: str
    reasons: list[str]


class TokenPercentiles(BaseModel):
    p50: int
    p90: int
    p99: int
    max: int


class PlannedLengths(BaseModel):
    algorithm: str
    sequence_tokens: int
    """The longest sequence planned (offline: prompt + completion; grpo/ppo: prompt + max_new_tokens)."""
    prompt_tokens: int
    """grpo/ppo: the longest prompt kept; offline: sequence_tokens - completion_tokens."""
    completion_tokens: int
    """Offline: the longest completion kept (every row of the micro-batch counted at it, where the vocabulary
    head runs); grpo/ppo: max_new_tokens (sampled, not in the data)."""


class DatasetLengthsSummary(BaseModel):
    """Token counts of the named dataset through the base model's tokenizer, before truncation."""

    id: str
    rows: int
    rows_measured: int
    rows_unreadable: int
    """Rows the trainer would refuse or a chat template failed on: left out of the counts."""
    sampled: bool
    """More rows than the planner measures: the counts (and max) are those of a seeded sample."""
    cached: bool
    """Measured by an earlier plan (no tokenising this time)."""
    prompt_tokens: TokenPercentiles | None
    completion_tokens: TokenPercentiles | None
    """The longest completion of each row (null for prompt-only data)."""
    sequence_tokens: TokenPercentiles | None
    planned: list[PlannedLengths]
    """The lengths each algorithm was planned at (its longest micro-batch)."""


class PlanResponse(BaseModel):
    model: ModelSummary
    hardware: HardwareSummary
    plans: list[AlgorithmPlan]
    recommendation: Recommendation
    dataset: DatasetLengthsSummary | None = None
    """When the request named a dataset: its token lengths and what each algorithm was planned at."""
    assumptions: list[str]
