"""Typed hyperparameters for every algorithm: the one source of truth.

The API validates job requests with these same classes, so this module imports pydantic only
(never torch). Each field carries its one-line description as a docstring right under it
(pydantic turns those into the JSON-schema description shown in `/docs`).

How the batch sizes relate (the only derived sizes, computed here and nowhere else):
- `batch_size` is what one optimizer step consumes: pairs (dpo, reward), prompts (grpo, ppo)
  or rows (sft), summed over all processes.
- `micro_batch_size` is what one forward/backward pass sees on one process; `micro_batch` is the
  size in effect (micro_batch_size, else batch_size). Gradient accumulation steps =
  batch_size / (micro_batch * world_size).
- For grpo, each prompt yields `num_generations` completions, so one step trains on
  batch_size * num_generations sequences, micro_batch * num_generations per forward/backward pass.
- For ppo, one rollout of batch_size prompts is split into `num_minibatches` minibatches, one
  optimizer step each; `micro_batch` defaults to one minibatch and never exceeds it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Algorithm = Literal["dpo", "reward", "sft", "grpo", "ppo"]
"""The training algorithms."""
JobAlgorithm = Literal[Algorithm, "evaluate"]
"""What a job runs: a training algorithm, or `evaluate` (scores models on a dataset, trains nothing)."""

# The dataset kind each algorithm trains on (see trainer.formats).
DATASET_KIND: dict[str, str] = {
    "dpo": "preference",
    "reward": "preference",
    "sft": "sft",
    "grpo": "prompt",
    "ppo": "prompt",
}
EVALUATE_KINDS = ("preference", "prompt")
"""`evaluate` scores preference pairs (no reward) or completions of prompts (with a reward)."""


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


SafeStr = Annotated[str, AfterValidator(_no_nul)]
"""A string without NUL characters (Postgres text and jsonb cannot hold them)."""


class _Config(BaseModel):
    # Unknown fields are refused (a misspelt hyperparameter must not train on its default) and
    # numbers are strict: no bools or numeric strings for numbers, no 1.5 for an integer, no NaN/inf.
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True, validate_default=True
    )


class CommonConfig(_Config):
    learning_rate: float = Field(1e-5, gt=0, le=1)
    """Peak learning rate of AdamW."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    """Fraction of the total steps spent warming the learning rate up linearly from 0."""
    num_epochs: float = Field(1.0, gt=0, le=100)
    """Passes over the training data (fractions allowed); ignored when max_steps is set."""
    max_steps: int | None = Field(None, ge=1, le=1_000_000)
    """Optimizer steps to run; wins over num_epochs when set."""
    batch_size: int = Field(8, ge=1, le=8192)
    """Examples per optimizer step, over all processes (pairs, prompts or rows)."""
    micro_batch_size: int | None = Field(None, ge=1, le=8192)
    """Examples per forward/backward pass on one process; gradient accumulation is derived."""
    max_grad_norm: float = Field(1.0, ge=0, le=1e6)
    """Clip the global gradient norm to this value (0 disables clipping)."""
    weight_decay: float = Field(0.0, ge=0, le=1)
    """Decoupled weight decay of AdamW."""
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1."""
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    """AdamW beta2."""
    max_length: int = Field(1024, ge=8, le=131072)
    """Longest tokenized sequence (prompt + completion); completions are cut from the right."""
    max_prompt_length: int = Field(512, ge=1, le=131072)
    """Longest tokenized prompt; prompts are cut from the left so the end of the prompt survives."""
    save_every: int | None = Field(None, ge=1, le=1_000_000)
    """Save a resumable checkpoint every this many steps (the final one is always saved)."""
    logging_every: int = Field(1, ge=1, le=10000)
    """Emit a metrics event every this many steps."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory at ~30% more compute."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Parameter/compute precision: auto uses bf16 on a GPU that supports it, else fp32."""

    @model_validator(mode="after")
    def _check_sizes(self) -> CommonConfig:
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size must not exceed batch_size")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError("batch_size must be a multiple of micro_batch_size")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self

    @property
    def micro_batch(self) -> int:
        """Examples per forward/backward pass on one process: micro_batch_size, else batch_size."""
        return self.micro_batch_size or self.batch_size

    def accumulation_steps(self, world_size: int = 1) -> int:
        """Forward/backward passes per optimizer step on each process."""
        micro = self.micro_batch
        per_step = micro * world_size
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {micro} x {world_size} processes"
            )
        return self.batch_size // per_step

    def total_steps(self, train_examples: int) -> int:
        """Optimizer steps the run will take for this many training examples."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(train_examples * self.num_epochs / self.batch_size))


class EvalConfig(_Config):
    """When to evaluate on the eval file, which checkpoint is the best, and when to stop early.

    `EVAL_METRICS` names what an algorithm's evaluation reports (each logged as `eval/<name>`);
    `EVAL_PREFIXES` names families of them, e.g. `rewards/` + a reward component's name.
    """

    EVAL_METRICS: ClassVar[tuple[str, ...]] = ()
    EVAL_PREFIXES: ClassVar[tuple[str, ...]] = ()

    eval_every: int | None = Field(None, ge=1, le=1_000_000)
    """Evaluate on the eval file every this many steps (and always at the end)."""
    eval_on_start: bool = False
    """Also evaluate before the first step (TRL's eval_on_start): the base model's score, a baseline."""
    best_metric: str | None = Field(None, min_length=1, max_length=200)
    """Keep the checkpoint with the best value of this eval metric (TRL's metric_for_best_model), e.g.
    eval/loss or eval/reward; the eval/ prefix may be left out."""
    best_metric_mode: Literal["min", "max"] | None = None
    """Whether lower (min) or higher (max) best_metric is better; default: min for a loss, else max."""
    early_stopping_patience: int | None = Field(None, ge=1, le=10000)
    """Stop after this many evaluations in a row without a better best_metric (needs eval_every)."""
    early_stopping_threshold: float = Field(0.0, ge=0, le=1e6)
    """How much best_metric must improve to count as better (as transformers' EarlyStoppingCallback)."""

    @field_validator("best_metric")
    @classmethod
    def _emitted_at_eval(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.removeprefix("eval/")
        known = name in cls.EVAL_METRICS or any(name.startswith(p) and name != p for p in cls.EVAL_PREFIXES)
        if not known:
            names = [f"eval/{m}" for m in cls.EVAL_METRICS] + [f"eval/{p}<component>" for p in cls.EVAL_PREFIXES]
            choices = ", ".join(names)
            raise ValueError(f"{value!r} is not a metric this algorithm reports at evaluation; choose one of {choices}")
        return f"eval/{name}"

    @field_validator("early_stopping_patience")
    @classmethod
    def _patience_needs(cls, value: int | None, info: ValidationInfo) -> int | None:
        # eval_every and best_metric are declared above, so info.data holds them when they were valid
        if value is not None and info.data.get("best_metric") is None:
            raise ValueError("early_stopping_patience needs best_metric (the metric that must improve)")
        if value is not None and info.data.get("eval_every") is None:
            raise ValueError("early_stopping_patience needs eval_every (it counts evaluations during training)")
        return value

    @model_validator(mode="after")
    def _resolve_mode(self) -> EvalConfig:
        if self.best_metric is not None and self.best_metric_mode is None:
            self.best_metric_mode = "min" if self.best_metric.endswith("loss") else "max"
        return self


AUTO_CHECKPOINT_FRACTION = 0.5
"""gradient_checkpointing "auto": largest share of the memory free at the start of training that one micro-batch's
activations may take without checkpointing (the rest is for the optimizer state, logits and the allocator)."""
ACTIVATION_HIDDEN_ELEMENTS = 24
ACTIVATION_INTERMEDIATE_ELEMENTS = 8
"""Elements autograd keeps per token and decoder layer without checkpointing, in units of hidden_size and
intermediate_size (a Llama-style layer). Calibrated on SmolLM2-135M (fp32, LoRA): a step without checkpointing
grew RSS by 5.1 GB for 1,646 tokens (3.1 MB/token, bench/README.md); 24 h + 8 I gives 3.1 MB. Larger than the
planner's count of named tensors (7 h + 4 I, api/plan/estimate.py) because autograd also keeps RMSNorm's fp32
intermediates, RoPE's and repeat_kv's copies and attention's outputs."""


def activation_bytes_per_token(hidden_size: int, intermediate_size: int, num_layers: int, dtype_bytes: int) -> int:
    """Activation bytes one token of a training forward keeps until backward, without gradient checkpointing."""
    per_layer = ACTIVATION_HIDDEN_ELEMENTS * hidden_size + ACTIVATION_INTERMEDIATE_ELEMENTS * intermediate_size
    return num_layers * per_layer * dtype_bytes


def auto_checkpoints(tokens: int, bytes_per_token: int, free_bytes: int) -> bool:
    """gradient_checkpointing "auto": whether a micro-batch whose forwards run `tokens` tokens is checkpointed."""
    return tokens * bytes_per_token > AUTO_CHECKPOINT_FRACTION * free_bytes


class OfflineConfig(CommonConfig, EvalConfig):
    """Settings of the algorithms that train on a fixed dataset (dpo, reward, sft) and can evaluate."""

    gradient_checkpointing: bool | Literal["auto"] = "auto"  # type: ignore[assignment]  # offline only: "auto"
    """Recompute activations in the backward pass: much less memory for ~20-30% more compute. true: every
    micro-batch (TRL's default); false: none; auto: a micro-batch is checkpointed only when its activations
    without checkpointing (`activation_bytes_per_token` x the tokens its forwards run) would exceed
    AUTO_CHECKPOINT_FRACTION (1/2) of the memory free when training starts (CPU: MemAvailable within the cgroup
    limit, shared by the node's processes; GPU: the device's free memory), so short micro-batches skip the
    recomputation and long ones stay within memory."""
    padding_free: bool = False
    """Pack each micro-batch into one row with per-sequence position ids: no padding (best with flash-attention)."""
    max_tokens_per_batch: int | None = Field(None, ge=16, le=1_048_576)
    """Token budget of one forward/backward pass per process: micro-batches are cut by length to fit it."""


class DPOConfig(OfflineConfig):
    EVAL_METRICS = (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    )

    learning_rate: float = Field(1e-6, gt=0, le=1)
    """Peak learning rate of AdamW (DPO wants it small; ~5e-5 with LoRA)."""
    beta: float = Field(0.1, gt=0, le=100)
    """Strength of the implicit KL to the reference (higher stays closer to it)."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """DPO (sigmoid), IPO (squared, length-normalised log-probs) or SLiC hinge loss."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Assumed rate of flipped labels (conservative DPO); sigmoid loss only."""
    disable_dropout: bool = True
    """Train without dropout (LoRA's included), as TRL does: the policy and the reference then score alike, and
    LoRA dropout cost ~15% of a step (bench/README.md)."""
    precompute_ref_logps: bool = True
    """Compute each pair's reference log-probs once and keep them, so no reference model stays in memory (LoRA: when
    a pair is first used; full fine-tuning: before training, for the pairs the run will use)."""

    @model_validator(mode="after")
    def _check_smoothing(self) -> DPOConfig:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("label_smoothing applies only to loss_type 'sigmoid'")
        return self


class RewardConfig(OfflineConfig):
    EVAL_METRICS = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected")

    learning_rate: float = Field(1e-5, gt=0, le=1)
    """Peak learning rate of AdamW."""
    disable_dropout: bool = True
    """Train without dropout (LoRA's included), as TRL does; LoRA dropout cost 15-25% of a step (bench/README.md)."""
    center_rewards_coefficient: float | None = Field(None, ge=0, le=100)
    """Weight of a penalty on the squared sum of the pair's rewards, keeping scores centred at 0."""


class SFTConfig(OfflineConfig):
    EVAL_METRICS = ("loss",)

    learning_rate: float = Field(2e-5, gt=0, le=1)
    """Peak learning rate of AdamW."""
    completion_only_loss: bool = True
    """Train on completion tokens only (prompt tokens are masked out of the loss)."""
    packing: bool = False
    """Pack several rows into each max_length sequence (no padding, faster)."""


class SamplingConfig(_Config):
    """How the online algorithms sample completions (not transformers' GenerationConfig)."""

    max_new_tokens: int = Field(128, ge=1, le=32768)
    """Longest completion sampled per prompt; sampling also stops at EOS."""
    temperature: float = Field(1.0, gt=0, le=10)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus-sampling mass."""
    generation_engine: Literal["cached", "generate"] = "cached"
    """Sampler: cached (each prompt encoded once, finished rows dropped) or generate (Hugging Face generate)."""


class OnlineEvalConfig(EvalConfig):
    """How GRPO and PPO evaluate: generate for the eval file's held-out prompts and score them with the reward.

    The eval metrics are the mean reward (`eval/reward`), its std over all eval completions
    (`eval/reward_std`), each component's mean (`eval/rewards/<name>`) and the mean completion length in
    tokens (`eval/completions/mean_length`). Generation uses its own fixed seed and leaves the training
    random stream untouched, so a run with evaluation trains exactly as one without.
    """

    EVAL_METRICS = ("reward", "reward_std", "completions/mean_length", "completions/clipped_ratio")
    EVAL_PREFIXES = ("rewards/",)

    eval_temperature: float = Field(0.0, ge=0, le=10)
    """Sampling temperature of the eval completions; 0 is greedy decoding."""
    eval_num_generations: int = Field(1, ge=1, le=64)
    """Completions generated per eval prompt (OpenRLHF's n_samples_per_prompt at evaluation)."""

    @field_validator("eval_num_generations")
    @classmethod
    def _greedy_once(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("eval_temperature") == 0:
            raise ValueError("eval_num_generations > 1 needs eval_temperature > 0: greedy completions are all the same")
        return value


class GRPOConfig(CommonConfig, SamplingConfig, OnlineEvalConfig):
    learning_rate: float = Field(1e-6, gt=0, le=1)
    """Peak learning rate of AdamW."""
    batch_size: int = Field(4, ge=1, le=8192)
    """Prompts per optimizer step, over all processes (each yields num_generations completions)."""
    num_generations: int = Field(8, ge=2, le=1024)
    """Completions sampled per prompt (the group size G)."""
    beta: float = Field(0.0, ge=0, le=100)
    """Weight of the k3 KL to the reference in the loss; 0 (default, as TRL's GRPOConfig, DAPO and Dr. GRPO)
    loads no reference model: one model's memory and one forward per step less. DeepSeekMath used 0.04."""
    epsilon_low: float = Field(0.2, ge=0, le=10)
    """Lower clip of the probability ratio: ratio >= 1 - epsilon_low."""
    epsilon_high: float = Field(0.2, ge=0, le=10)
    """Upper clip of the probability ratio: ratio <= 1 + epsilon_high (DAPO raises it to 0.28)."""
    num_iterations: int = Field(1, ge=1, le=64)
    """Updates per generated batch (>1 reuses it with stored old log-probs)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's reward std, the batch's, or nothing (Dr. GRPO)."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """How per-token losses are averaged; see trainer.losses.aggregate_token_loss."""

    @property
    def micro_batch_sequences(self) -> int:
        """Sequences per forward/backward pass: micro_batch prompts x num_generations completions."""
        return self.micro_batch * self.num_generations


class PPOConfig(CommonConfig, SamplingConfig, OnlineEvalConfig):
    learning_rate: float = Field(3e-6, gt=0, le=1)
    """Peak learning rate of AdamW."""
    batch_size: int = Field(8, ge=1, le=8192)
    """Prompts per rollout (one completion each), over all processes."""
    max_new_tokens: int = Field(53, ge=1, le=32768)
    """Longest completion sampled per prompt; sampling also stops at EOS."""
    temperature: float = Field(0.7, gt=0, le=10)
    """Sampling temperature."""
    kl_coef: float = Field(0.05, ge=0, le=100)
    """Weight of the per-token KL penalty folded into the reward."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator: k1 = log-ratio (unbiased), k3 = ratio - 1 - log-ratio (>= 0)."""
    adaptive_kl_target: float | None = Field(None, gt=0, le=1000)
    """If set, adapt kl_coef so the observed KL tracks this target (Ziegler et al. 2019)."""
    adaptive_kl_horizon: int = Field(10000, ge=1, le=10_000_000)
    """Horizon of the adaptive KL controller, in samples."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount factor of GAE."""
    lam: float = Field(0.95, ge=0, le=1)
    """Lambda of GAE (bias/variance trade-off of the advantage)."""
    cliprange: float = Field(0.2, gt=0, le=10)
    """Clip of the policy probability ratio."""
    cliprange_value: float = Field(0.2, gt=0, le=1000)
    """Clip of the value prediction around its rollout-time value."""
    vf_coef: float = Field(0.1, ge=0, le=100)
    """Weight of the value loss against the policy loss."""
    ppo_epochs: int = Field(1, ge=1, le=100)
    """Passes of PPO updates over each rollout batch: 1 (default, as verl's ppo_epochs and OpenRLHF's
    max_epochs) costs one forward/backward per rollout; TRL's old PPOTrainer used 4 (4x the update time)."""
    num_minibatches: int = Field(1, ge=1, le=1024)
    """Minibatches each rollout batch is split into per PPO epoch."""
    missing_eos_penalty: float | None = Field(None, ge=0, le=1000)
    """Subtract this from the score of completions that hit max_new_tokens without EOS."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards before GAE."""
    value_model: Literal["head", "separate"] = "head"
    """Value head on the policy trunk (one model) or a separate copy of the policy's base with a scalar head."""

    @model_validator(mode="after")
    def _check_minibatches(self) -> PPOConfig:
        if self.batch_size % self.num_minibatches:
            raise ValueError("batch_size must be a multiple of num_minibatches")
        return self

    @property
    def minibatch_size(self) -> int:
        """Rollouts per PPO minibatch, i.e. per optimizer step: batch_size / num_minibatches."""
        return self.batch_size // self.num_minibatches

    @property
    def micro_batch(self) -> int:
        """Rollouts per forward/backward pass: micro_batch_size, else one minibatch, and never more than one."""
        return min(self.micro_batch_size or self.minibatch_size, self.minibatch_size)


HYPERPARAMETERS: dict[str, type[CommonConfig]] = {
    "dpo": DPOConfig,
    "reward": RewardConfig,
    "sft": SFTConfig,
    "grpo": GRPOConfig,
    "ppo": PPOConfig,
}


class LoraConfig(_Config):
    r: int = Field(16, ge=1, le=1024)
    """Rank of the low-rank update."""
    alpha: int = Field(32, ge=1, le=4096)
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: Annotated[list[str], Field(max_length=256)] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or all-linear for every linear layer but the output head."""
    merge: bool = False
    """Also save the base model with the adapter merged in (loads without peft)."""

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, value: list[str] | str) -> list[str] | str:
        for i, name in enumerate(value if isinstance(value, list) else []):
            if not 1 <= len(name) <= 200:
                raise ValueError(f"target_modules[{i}]: a module name has 1 to 200 characters")
            _no_nul(name)
        return value


class EvaluateConfig(SamplingConfig):
    """Settings of an `evaluate` job (trainer.evaluate): how much data, how it is batched and, for
    prompt datasets, how completions are generated (the generation names are GRPO's)."""

    max_samples: int = Field(200, ge=1, le=10000)
    """Rows of the dataset evaluated (the first ones in file order)."""
    batch_size: int = Field(8, ge=1, le=1024)
    """Pairs or prompts per forward pass / generate call (memory, not results)."""
    max_length: int = Field(1024, ge=8, le=131072)
    """Longest tokenized sequence (prompt + completion); completions are cut from the right."""
    max_prompt_length: int = Field(512, ge=1, le=131072)
    """Longest tokenized prompt; prompts are cut from the left so the end of the prompt survives."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision: auto uses bf16 on a GPU that supports it, else fp32."""
    beta: float = Field(0.1, gt=0, le=100)
    """Scale of the DPO implicit reward beta * (log pi - log pi_ref) of preference pairs (set it to the DPO job's)."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """DPO loss reported as eval/loss for causal models (ipo also length-normalises the implicit rewards)."""
    num_generations: int = Field(1, ge=1, le=64)
    """Completions generated per prompt (prompt datasets)."""
    do_sample: bool = True
    """Sample completions (temperature, top_p); false decodes greedily and needs num_generations 1."""
    samples_per_model: int = Field(3, ge=0, le=32)
    """`sample` events (prompt, completion, reward) emitted per model (prompt datasets)."""

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        if not self.do_sample and self.num_generations > 1:
            raise ValueError("greedy decoding (do_sample false) gives one completion per prompt: set num_generations 1")
        return self


JOB_CONFIGS: dict[str, type[CommonConfig] | type[EvaluateConfig]] = {**HYPERPARAMETERS, "evaluate": EvaluateConfig}
"""The hyperparameter class of everything a job can run (the training algorithms and evaluate)."""


# Reward components (grpo/ppo). A reward spec is a weighted list of these.


def _type_required(schema: dict[str, Any]) -> None:
    # The union is told apart by `type`, so a request must send it; the Python default is a convenience.
    required = schema.setdefault("required", [])
    if "type" not in required:
        required.insert(0, "type")


class _Component(_Config):
    model_config = ConfigDict(json_schema_extra=_type_required)

    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name used in metrics (rewards/<name>); defaults to the rule or 'model'."""
    weight: float = Field(1.0, ge=-1e6, le=1e6, allow_inf_nan=False)
    """Weight of this component in the summed reward."""


class ModelComponent(_Component):
    type: Literal["model"] = "model"
    model: SafeStr = Field(min_length=1, max_length=500)
    """A sequence-classification model: a MODEL_REF in the API, a local folder in a trainer spec."""


RE2_REQUIRED = (
    "RE2 syntax is required: rule patterns run on RE2, which matches in time linear in the text, so no "
    "pattern can stall scoring; RE2 has no backreferences (\\1), lookahead or lookbehind ((?=, (?!, (?<=), "
    "possessive or atomic groups (a++, (?>...)); see https://github.com/google/re2/wiki/Syntax"
)


def compile_rule_pattern(pattern: str, *, dotall: bool = False) -> Any:
    """The RE2 program of a regex/format rule (raises ValueError saying why RE2 refuses it)."""
    import re2  # google-re2: linear-time matching, no catastrophic backtracking

    options = re2.Options()
    options.log_errors = False
    options.dot_nl = dotall
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"pattern is not valid RE2 ({reason}); {RE2_REQUIRED}") from exc


class RuleComponent(_Component):
    type: Literal["rule"] = "rule"
    rule: Literal["exact_match", "contains", "regex", "length", "format", "string_check", "fuzzy_match"]
    """Which rule scores the completion (see trainer.rewards)."""
    column: SafeStr = Field("answer", min_length=1, max_length=300)
    """Dataset column the rule compares against (exact_match, contains; string_check, fuzzy_match without reference)."""
    pattern: SafeStr | None = Field(None, max_length=1000)
    """Regular expression for regex/format rules, in RE2 syntax (linear-time matching)."""
    target_length: int | None = Field(None, ge=1, le=1_000_000)
    """Target completion length in characters for the length rule."""
    length_mode: Literal["target", "max"] = "target"
    """Length rule: 'target' scores -|len - target| / target; 'max' penalises only the excess over target."""
    operation: Literal["eq", "ne", "like", "ilike"] | None = None
    """string_check rule (OpenAI's string_check grader): eq/ne compare whole strings, like/ilike test containment
    (ilike ignoring case)."""
    reference: SafeStr | None = Field(None, max_length=10000)
    """string_check and fuzzy_match rules: a fixed reference string instead of the dataset column."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_rule_pattern(value)
        return value

    @model_validator(mode="after")
    def _needs(self) -> RuleComponent:
        if self.rule in ("regex", "format") and not self.pattern:
            raise ValueError(f"rule '{self.rule}' needs a pattern")
        if self.rule == "length" and self.target_length is None:
            raise ValueError("rule 'length' needs target_length")
        if self.rule == "string_check" and self.operation is None:
            raise ValueError("rule 'string_check' needs an operation (eq, ne, like or ilike)")
        if self.rule != "string_check" and self.operation is not None:
            raise ValueError("operation applies to rule 'string_check' only")
        if self.rule not in ("string_check", "fuzzy_match") and self.reference is not None:
            raise ValueError("reference applies to rules 'string_check' and 'fuzzy_match' only")
        return self


RewardComponent = Annotated[ModelComponent | RuleComponent, Field(discriminator="type")]


class EvalModel(_Config):
    """One model an `evaluate` spec scores."""

    name: SafeStr = Field(min_length=1, max_length=500)
    """Label of its results and events (the MODEL_REF in the service)."""
    path: str = Field(min_length=1)
    """Local Hugging Face folder (or a GGUF file)."""


class TrainSpec(_Config):
    """What `python -m trainer run SPEC.json` reads (DESIGN §7). Paths are local."""

    algorithm: JobAlgorithm
    """Which algorithm to run (or evaluate: score models, train nothing)."""
    base_model: str
    """Local Hugging Face folder (or a GGUF file) of the starting model."""
    train_file: str
    """Local JSONL (or .jsonl.gz) training data."""
    eval_file: str | None = None
    """Local JSONL evaluation data of the same kind."""
    reward: list[RewardComponent] | None = None
    """Reward components for grpo/ppo (and evaluate on prompts), with local model paths."""
    models: list[EvalModel] | None = Field(None, max_length=64)
    """evaluate only: the models scored, in order, the base model (the reference) first; default: the base model."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Algorithm hyperparameters; validated by the algorithm's config class."""
    lora: LoraConfig | None = None
    """LoRA settings, or null for full fine-tuning."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed for data order, initialisation and sampling."""
    dataset_sha256: dict[str, str] = Field(default_factory=dict)
    """Recorded in alignd.json of each checkpoint (filled by the worker)."""
    job_id: str | None = None
    """Recorded in alignd.json when run by the service."""
    trust_remote_code: bool = False
    """Let models with custom code (a config's auto_map) run it when they load; only for trusted models."""

    def config(self) -> CommonConfig | EvaluateConfig:
        """The validated hyperparameters of this spec's algorithm."""
        return parse_hyperparameters(self.algorithm, self.hyperparameters)

    @model_validator(mode="after")
    def _reward_for_online(self) -> TrainSpec:
        if self.algorithm in ("grpo", "ppo") and not self.reward:
            raise ValueError(f"{self.algorithm} needs a reward (a list of reward components)")
        if self.models is not None and self.algorithm != "evaluate":
            raise ValueError("models applies to evaluate only")
        if self.models and self.models[0].path != self.base_model:
            raise ValueError("models[0] must be the base model (the reference of the DPO implicit rewards)")
        return self

    @model_validator(mode="after")
    def _eval_file_for_best(self) -> TrainSpec:
        best = self.hyperparameters.get("best_metric")
        if best is not None and self.eval_file is None:
            raise ValueError("hyperparameters.best_metric needs an eval_file (the metric is measured on it)")
        if isinstance(best, str):
            check_reward_metric(best, self.reward or [])
        return self


def parse_hyperparameters(algorithm: str, values: dict[str, Any]) -> CommonConfig | EvaluateConfig:
    """Validate `values` with the algorithm's config class (raises pydantic.ValidationError)."""
    return JOB_CONFIGS[algorithm].model_validate(values)


def component_metric_names(components: list[Any]) -> list[str]:
    """The metric name of each reward component (rewards/<name>): its name, else its rule or 'model';
    a repeated name gets _2, _3, ..."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for component in components:
        base = component.name or (component.rule if isinstance(component, RuleComponent) else "model")
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def check_reward_metric(best_metric: str, components: list[Any]) -> None:
    """A best_metric of eval/rewards/<name> must name one of the reward's components (raises ValueError)."""
    prefix, name = "eval/rewards/", "eval/" + best_metric.removeprefix("eval/")
    if not name.startswith(prefix):
        return
    names = component_metric_names(components)
    if name.removeprefix(prefix) not in names:
        choices = ", ".join(prefix + n for n in names) or "none (no reward components)"
        raise ValueError(f"best_metric {best_metric!r} names no reward component; the components are {choices}")
