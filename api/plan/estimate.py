"""The planner's arithmetic: memory and time of one training step of each algorithm (docs/plan.md).

Pure: reads a model's config.json as a dict (never weights) and imports neither torch nor the API,
so it is unit-testable and usable from scripts (bench/plan_validation.py). Every formula is here and
written down in docs/plan.md; the numbers are estimates of the alignd trainer as it is written
(trainer/*.py): which models it keeps, which tensors autograd keeps, which dtypes it uses.

Notation: N parameters, h hidden size, I MLP size, L layers, V vocabulary, q = heads x head_dim,
kv = KV heads x head_dim, T = max_length, Tp = max_prompt_length, Tn = max_new_tokens,
p = bytes per parameter (fp32 4, bf16 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.config import activation_bytes_per_token, auto_checkpoints

Algorithm = Literal["dpo", "reward", "sft", "grpo", "ppo"]
Precision = Literal["fp32", "bf16"]
MIB = 2**20
GIB = 2**30

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""A Llama-style decoder layer's linear layers: what LoRA's `all-linear` adapts (never the LM head)."""

TRAIN_LOGIT_COPIES = 3
"""Online (grpo, ppo) training pass, which still computes (B, Tn, V) logits: fp32 B x Tn x V tensors alive
at once: the logits upcast to fp32 (kept by logsumexp for backward), their gradient and the gather's."""
FORWARD_LOGIT_COPIES = 2
"""The same without gradients (reference / old log-probs): upcast logits and logsumexp's temporary."""
CHUNK_ELEMENTS = 2**24
"""Logits one chunk of the offline log-probs holds (trainer.logprobs.CHUNK_ELEMENTS; a test keeps them equal):
the vocabulary head runs on CHUNK_ELEMENTS // V completion tokens at a time, never on (B, T, V)."""
TRAIN_CHUNK_FP32_COPIES = 3
"""fp32 chunk x V tensors alive when backward reaches a chunk (each chunk is checkpointed, so its logits
are recomputed there): the upcast logits logsumexp keeps, and its backward's exp(x - lse) and product
with the incoming gradient. In bf16 the head's own bf16 output is alive beside them."""
FORWARD_CHUNK_FP32_COPIES = 2
"""The same in a no-grad pass (DPO's reference log-probs): the upcast logits and logsumexp's (x - max)."""
OFFLINE_CHECKPOINTING: dict[str, bool | Literal["auto"]] = {
    "dpo": "auto",
    "reward": "auto",
    "sft": "auto",
    "grpo": False,
    "ppo": False,
}
"""gradient_checkpointing when a request or job leaves it out: trainer.config's defaults (auto offline)."""
GPU_OVERHEAD_BYTES = 1 * GIB
"""CUDA context, cuBLAS workspaces and allocator slack on a GPU (a stated allowance, not measured here)."""
CPU_RUNTIME_BASELINE_MB = 402
"""Peak RSS of a trainer process before any model on CPU: torch, transformers, peft and the trainer
imported and a tokenizer loaded. Measured once by bench/plan_validation.py on the 2-core dev box
(CPython 3.11); give hardware.overhead_mb to use another machine's value."""
DEFAULT_EFFICIENCY = 0.4
"""Fraction of the peak matmul throughput (and memory bandwidth) a training step reaches."""


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float | None
    """Dense bf16 tensor-core peak (None: no bf16 tensor cores)."""
    fp32_tflops: float
    """Plain fp32 (PyTorch leaves TF32 off for matmuls by default)."""
    bandwidth_gbs: float


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("H100", 80, 989, 67, 3350),  # SXM
        GPU("H200", 141, 989, 67, 4800),
        GPU("A100-80GB", 80, 312, 19.5, 2039),
        GPU("A100-40GB", 40, 312, 19.5, 1555),
        GPU("L40S", 48, 362, 91.6, 864),
        GPU("L4", 24, 121, 30.3, 300),
        GPU("A10G", 24, 70, 31.2, 600),
        GPU("T4", 16, None, 8.1, 320),
        GPU("RTX 4090", 24, 165, 82.6, 1008),
    )
}
"""Known GPUs: datasheet memory, dense peak throughput and memory bandwidth."""


@dataclass(frozen=True)
class Hardware:
    kind: Literal["gpu", "cpu"]
    name: str
    count: int
    memory_bytes: int
    """Memory of one device (a GPU, or the CPU machine's RAM)."""
    flops: float
    """Peak FLOP/s of one device at the chosen precision."""
    bandwidth_bytes: float
    overhead_bytes: int
    """Runtime memory before any model: CUDA context on a GPU; on CPU the process's baseline RSS."""
    efficiency: float = DEFAULT_EFFICIENCY
    notes: tuple[str, ...] = ()

    @classmethod
    def gpu(
        cls, name: str, count: int = 1, precision: Precision = "bf16", efficiency: float = DEFAULT_EFFICIENCY
    ) -> Hardware:
        gpu = GPUS[name]
        notes: list[str] = []
        tflops = gpu.bf16_tflops if precision == "bf16" else gpu.fp32_tflops
        if tflops is None:
            notes.append(f"{name} has no bf16 tensor cores: bf16 runs at about its fp32 speed")
            tflops = gpu.fp32_tflops
        return cls(
            "gpu",
            name,
            count,
            int(gpu.memory_gib * GIB),
            tflops * 1e12,
            gpu.bandwidth_gbs * 1e9,
            GPU_OVERHEAD_BYTES,
            efficiency,
            tuple(notes),
        )

    @classmethod
    def cpu(
        cls,
        memory_gb: float,
        flops: float,
        overhead_mb: float,
        bandwidth_gbs: float = 20.0,
        efficiency: float = DEFAULT_EFFICIENCY,
    ) -> Hardware:
        return cls(
            "cpu", "CPU", 1, int(memory_gb * GIB), flops, bandwidth_gbs * 1e9, int(overhead_mb * MIB), efficiency
        )


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a decoder's config.json (Llama-style: gated MLP, RMSNorm, RoPE)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    model_type: str = "llama"
    qkv_bias: bool = False
    """Biases on q/k/v (Qwen2; Llama's attention_bias)."""
    stored_dtype_bytes: int | None = None
    """Bytes per parameter of the saved weights (config.json's dtype), when it says: what a model loaded
    without an explicit dtype (transformers' "auto") holds in memory, e.g. a reward model."""

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_params(self) -> int:
        biases = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return sum(a * b for a, b in self.linear_shapes().values()) + biases + 2 * self.hidden_size  # + two RMSNorms

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def params(self, head: Literal["lm", "score"] = "lm") -> int:
        """All parameters: embeddings, layers, final norm, and the LM head (or a 1-output score head)."""
        body = self.embedding_params + self.num_layers * self.layer_params + self.hidden_size
        if head == "score":
            return body + self.hidden_size
        return body + (0 if self.tied_embeddings else self.embedding_params)

    def matmul_params(self, head: Literal["lm", "score"] = "lm") -> int:
        """Parameters that take part in matmuls (the FLOPs count): all but the input embedding lookup."""
        lm_head = self.embedding_params if head == "lm" else self.hidden_size
        return self.num_layers * self.layer_params + lm_head

    def adapted(self, target_modules: list[str] | str) -> list[str]:
        shapes = self.linear_shapes()
        return list(shapes) if target_modules == "all-linear" else [m for m in target_modules if m in shapes]

    def lora_params(self, r: int, target_modules: list[str] | str) -> int:
        """Trainable LoRA parameters: r x (in + out) per adapted linear layer."""
        shapes = self.linear_shapes()
        return self.num_layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in self.adapted(target_modules))


class ConfigError(ValueError):
    """config.json lacks what the planner needs; the message says which key."""


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per parameter of a config.json dtype."""


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A ModelShape from a Hugging Face config.json dict (multimodal configs: their text_config)."""
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "model_type": config.get("model_type", "")}

    def need(*keys: str) -> int:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        raise ConfigError(f"config.json has no positive integer {' or '.join(keys)}")

    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return ModelShape(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
        num_layers=need("num_hidden_layers", "n_layer"),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        model_type=str(config.get("model_type") or "unknown"),
        qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        stored_dtype_bytes=DTYPE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "")),
    )


@dataclass(frozen=True)
class Lora:
    r: int
    target_modules: list[str] | str = "all-linear"
    dropout: float = 0.05


@dataclass(frozen=True)
class PlanInput:
    shape: ModelShape
    precision: Precision = "bf16"
    lora: Lora | None = None
    max_length: int = 1024
    max_prompt_length: int = 512
    max_new_tokens: int = 128
    batch_size: int = 8
    micro_batch_size: int | None = None
    num_generations: int = 8
    gradient_checkpointing: bool | Literal["auto"] | None = None
    """None: the trainer's default for the algorithm (auto for dpo/reward/sft, off for grpo/ppo)."""
    padding_free: bool = False
    """Offline: each micro-batch packed into one row (worst case: the same tokens as padded)."""
    max_tokens_per_batch: int | None = None
    """Offline: token budget of one forward/backward pass (fewer examples per pass when it binds)."""
    reward_shapes: list[ModelShape] = field(default_factory=list)
    """Reward models (sequence classifiers) the online algorithms keep in memory."""
    reward_rules_only: bool = False
    """The online reward is rules only (no reward model at all)."""
    precompute_ref_logps: bool = True
    grpo_beta_positive: bool = True
    """GRPO keeps a reference (beta > 0). The trainer's default is beta 0 (no reference); a PlanRequest has no
    beta, so /plan stays conservative and counts one, while job checks read the spec's beta (or that default)."""
    ppo_value_model: Literal["head", "separate"] = "head"
    ppo_epochs: int = 1
    num_minibatches: int = 1

    @property
    def param_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2


def job_plan_input(
    shape: ModelShape, hyperparameters: dict[str, Any], lora: Lora | None, reward_shapes: list[ModelShape]
) -> PlanInput:
    """The PlanInput of a job as it will run on a GPU worker: `hyperparameters` with the trainer's defaults
    filled in (trainer.config), precision auto planned as bf16; no reward model means rules only."""
    hp = hyperparameters
    return PlanInput(
        shape=shape,
        precision="fp32" if hp.get("precision") == "fp32" else "bf16",
        lora=lora,
        max_length=hp["max_length"],
        max_prompt_length=hp["max_prompt_length"],
        max_new_tokens=hp.get("max_new_tokens", 128),
        batch_size=hp["batch_size"],
        micro_batch_size=hp.get("micro_batch_size"),
        num_generations=hp.get("num_generations", 8),
        gradient_checkpointing=hp.get("gradient_checkpointing"),
        padding_free=bool(hp.get("padding_free")),
        max_tokens_per_batch=hp.get("max_tokens_per_batch"),
        reward_shapes=reward_shapes,
        reward_rules_only=not reward_shapes,
        precompute_ref_logps=hp.get("precompute_ref_logps", True),
        grpo_beta_positive=hp.get("beta", 0.0) > 0,  # trainer.config.GRPOConfig.beta defaults to 0
        ppo_value_model=hp.get("value_model", "head"),
        ppo_epochs=hp.get("ppo_epochs", 1),  # PPOConfig.ppo_epochs defaults to 1
        num_minibatches=hp.get("num_minibatches", 1),
    )


# --- the pieces ------------------------------------------------------------------------------------


def activation_elements_per_token(
    shape: ModelShape, seq_len: int, attention_scores: bool, lora: Lora | None = None
) -> int:
    """Elements autograd keeps per token of one decoder layer (no gradient checkpointing).

    Attention block: its input, the normed input, q, k, v, RoPE'd q and k, the attention output
    (5h + 3 kv when q = h); MLP block: input, normed input, gate, act(gate), up, product (2h + 4I);
    plus, only for eager attention, the T x T attention probabilities per head (the trainer's SDPA
    runs flash / memory-efficient kernels on CPU and GPU, which keep none); with LoRA
    dropout, each adapted layer's own dropped-out copy of its input (what lora_A keeps).
    """
    h, i = shape.hidden_size, shape.intermediate_size
    attention = 2 * h + 3 * shape.q_dim + 2 * shape.kv_dim + shape.kv_dim
    mlp = 2 * h + 4 * i
    scores = shape.num_heads * seq_len if attention_scores else 0
    shapes = shape.linear_shapes()
    dropped = sum(shapes[m][0] for m in shape.adapted(lora.target_modules)) if lora and lora.dropout > 0 else 0
    return attention + mlp + scores + dropped


def activations_bytes(
    shape: ModelShape,
    rows: int,
    seq_len: int,
    dtype_bytes: int,
    checkpointing: bool,
    attention_scores: bool,
    lora: Lora | None = None,
) -> int:
    """Activations of a training pass over rows x seq_len tokens: all L layers, or with gradient
    checkpointing each layer's input plus one layer recomputed at a time; plus embeddings/final norm (3h);
    in bf16, the fp32 copies RMSNorm keeps of its inputs."""
    tokens = rows * seq_len
    per_layer = activation_elements_per_token(shape, seq_len, attention_scores, lora)
    layers_kept = 1 if checkpointing else shape.num_layers
    elements = (shape.num_layers * shape.hidden_size if checkpointing else 0) + layers_kept * per_layer
    # RMSNorm upcasts its input to fp32 and keeps that copy: 2 norms per layer kept, and the final one.
    upcast = (2 * layers_kept + 1) * shape.hidden_size * (4 - dtype_bytes)
    return tokens * ((elements + 3 * shape.hidden_size) * dtype_bytes + upcast)


def logits_bytes(shape: ModelShape, rows: int, positions: int, copies: int) -> int:
    """B x K x V logits in fp32 (the trainer upcasts before log-softmax), `copies` of them alive."""
    return rows * positions * shape.vocab_size * 4 * copies


def logprob_chunk_tokens(shape: ModelShape, positions: int) -> int:
    """Tokens the vocabulary head runs on at once in the offline log-probs (trainer.logprobs.chunked_token_logprobs)."""
    return min(positions, max(1, CHUNK_ELEMENTS // shape.vocab_size))


def chunked_logits_bytes(shape: ModelShape, positions: int, dtype_bytes: int, fp32_copies: int) -> int:
    """Offline log-probs of `positions` completion tokens (all rows together), computed in chunks.

    The completion positions' final hidden states (positions x h, model dtype: cut out of the batch and
    kept for the chunks' backward) plus ONE chunk's logits: `fp32_copies` fp32 chunk x V tensors, and in
    bf16 the head's own output beside them (in fp32 the upcast is that same tensor).
    """
    chunk = logprob_chunk_tokens(shape, positions)
    own = dtype_bytes if dtype_bytes != 4 else 0
    return positions * shape.hidden_size * dtype_bytes + chunk * shape.vocab_size * (own + 4 * fp32_copies)


def checkpointing_in_effect(algorithm: Algorithm, x: PlanInput, micro: int, free_bytes: int) -> bool:
    """gradient_checkpointing in effect: as asked, else the trainer's default for the algorithm. "auto" is the
    trainer's rule (trainer.config.auto_checkpoints) for the worst micro-batch (every sequence at max_length):
    checkpointed when its activations would take more than half of `free_bytes`, the memory left once the
    models, their gradients and optimizer state are in memory (the trainer: free memory at start less the
    trainable parameters' gradients and AdamW state)."""
    asked = OFFLINE_CHECKPOINTING[algorithm] if x.gradient_checkpointing is None else x.gradient_checkpointing
    if asked != "auto":
        return bool(asked)
    s = x.shape
    tokens = examples_per_pass(algorithm, x, micro) * (2 if algorithm in ("dpo", "reward") else 1) * x.max_length
    per_token = activation_bytes_per_token(s.hidden_size, s.intermediate_size, s.num_layers, x.param_bytes)
    return auto_checkpoints(tokens, per_token, free_bytes)


def offline_micro_batch(algorithm: Algorithm, x: PlanInput, hw: Hardware) -> int:
    """Examples per pass as the trainer cuts them (trainer.packing.examples_per_pass): micro_batch_size, else
    batch_size, except offline on a CPU with neither micro_batch_size nor max_tokens_per_batch: one."""
    if x.micro_batch_size is not None:
        return x.micro_batch_size
    offline = algorithm in ("dpo", "reward", "sft")
    return 1 if offline and hw.kind == "cpu" and x.max_tokens_per_batch is None else x.batch_size


def examples_per_pass(algorithm: Algorithm, x: PlanInput, micro: int) -> int:
    """Examples in one forward/backward pass: the micro-batch, or fewer when max_tokens_per_batch binds.

    Every sequence at max_length (the worst case), a pass of m examples costs m x sequences x T tokens,
    padded or packed (trainer.packing.micro_batches); an example over the budget on its own gets a pass.
    """
    if algorithm not in ("dpo", "reward", "sft") or x.max_tokens_per_batch is None:
        return micro
    per_example = x.max_length * (2 if algorithm in ("dpo", "reward") else 1)
    return max(1, min(micro, x.max_tokens_per_batch // per_example))


def kv_cache_bytes(shape: ModelShape, sequences: int, length: int, dtype_bytes: int) -> int:
    """Generation KV cache: keys and values of every layer for every sequence and position."""
    return 2 * shape.num_layers * shape.kv_dim * sequences * length * dtype_bytes


# --- one algorithm ---------------------------------------------------------------------------------


def _model(role: str, kind: str, params: int, trainable: int, weight_bytes: int, train_bytes: int) -> dict[str, Any]:
    """A model in memory: its weights, and gradients + AdamW's two states for what it trains."""
    return {
        "role": role,
        "kind": kind,
        "params": params,
        "trainable_params": trainable,
        "weights_bytes": weight_bytes,
        "gradients_bytes": trainable * train_bytes,
        "optimizer_bytes": 2 * trainable * train_bytes,
    }


def _divisors_desc(n: int) -> list[int]:
    return sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True)


def models_in_memory(algorithm: Algorithm, x: PlanInput) -> list[dict[str, Any]]:
    """The models an algorithm keeps, with weights/gradients/optimizer bytes.

    Trainable parameters keep gradients and AdamW's exp_avg and exp_avg_sq in their own dtype (the
    trainer has no fp32 master copy): bf16 for full bf16 training; LoRA adapters are fp32 (peft
    upcasts adapters of a bf16 base).
    """
    s, p = x.shape, x.param_bytes
    head: Literal["lm", "score"] = "score" if algorithm == "reward" else "lm"
    n = s.params(head)
    if x.lora is None:
        policy = _model("policy", "trained in full", n, n, n * p, p)
    else:
        lora = s.lora_params(x.lora.r, x.lora.target_modules) + (s.hidden_size if head == "score" else 0)
        policy = _model("policy", f"LoRA r={x.lora.r} on a frozen base", n + lora, lora, n * p + lora * 4, 4)
    if algorithm == "reward":
        policy["role"] = "reward model (trained)"
    models = [policy]
    frozen = s.params("lm") * p

    def reference(needed: bool, precomputed: bool = False) -> None:
        if not needed:
            return
        if precomputed:
            models.append(_model("reference", "precomputed log-probs (no model)", 0, 0, 0, 0))
        elif x.lora is not None:
            models.append(_model("reference", "the base with adapters disabled (no copy)", 0, 0, 0, 0))
        else:
            models.append(_model("reference", "frozen copy of the base", s.params("lm"), 0, frozen, 0))

    if algorithm == "dpo":
        reference(True, x.precompute_ref_logps)
    if algorithm in ("grpo", "ppo"):
        reference(algorithm == "ppo" or x.grpo_beta_positive)
        for i, rm in enumerate(x.reward_shapes):
            # trainer.rewards loads a reward model in its saved dtype, whatever the job's precision
            rm_bytes = rm.stored_dtype_bytes or p
            models.append(
                _model(
                    f"reward model {i + 1}",
                    "frozen sequence classifier" + (" (fp32 as saved)" if rm_bytes == 4 and p != 4 else ""),
                    rm.params("score"),
                    0,
                    rm.params("score") * rm_bytes,
                    0,
                )
            )
        if x.reward_rules_only:
            models.append(_model("reward", "rules (no model)", 0, 0, 0, 0))
    if algorithm == "ppo":
        if x.ppo_value_model == "head":
            h = s.hidden_size + 1
            models.append(_model("value", "scalar head on the policy trunk", h, h, h * 4, 4))
        else:
            v = s.params("score")
            models.append(_model("value", "separate sequence classifier, trained in full", v, v, v * p, p))
    return models


def _phases(algorithm: Algorithm, x: PlanInput, micro: int, checkpointing: bool) -> dict[str, int]:
    """Transient bytes of each phase of a step at micro-batch `micro` (pairs, rows or prompts)."""
    s, p = x.shape, x.param_bytes
    T, Tp, Tn = x.max_length, x.max_prompt_length, x.max_new_tokens
    if algorithm in ("dpo", "reward", "sft"):
        rows = examples_per_pass(algorithm, x, micro) * (2 if algorithm in ("dpo", "reward") else 1)
        positions = rows * max(T - Tp, 1)  # the vocabulary head runs on completion positions only
        acts = activations_bytes(s, rows, T, p, checkpointing, False, x.lora)
        logits = 0 if algorithm == "reward" else chunked_logits_bytes(s, positions, p, TRAIN_CHUNK_FP32_COPIES)
        if algorithm != "reward" and x.lora is None and positions > logprob_chunk_tokens(s, positions):
            # every chunk's backward makes a V x h gradient of the head, added to the one accumulated so far
            logits += s.embedding_params * p
        phases = {"activations_bytes": acts, "logits_bytes": logits, "kv_cache_bytes": 0}
        if algorithm == "dpo":  # reference log-probs (precomputed before training, or every step): no grad
            # the forward returns every layer's hidden states (output_hidden_states), alive until the head runs
            hidden = (s.num_layers + 1) * rows * T * s.hidden_size * p
            phases["forward_logits_bytes"] = hidden + chunked_logits_bytes(s, positions, p, FORWARD_CHUNK_FP32_COPIES)
        return phases
    # online: generation for the whole batch at once, then passes over micro x (G) rows of Tp + Tn tokens
    sequences = x.batch_size * (x.num_generations if algorithm == "grpo" else 1)
    rows = micro * (x.num_generations if algorithm == "grpo" else 1)
    length = Tp + Tn
    acts = activations_bytes(s, rows, length, p, checkpointing, False, x.lora)
    if algorithm == "ppo" and x.ppo_value_model == "separate":
        acts *= 2  # the value model's own trunk
    return {
        "activations_bytes": acts,
        "logits_bytes": logits_bytes(s, rows, Tn, TRAIN_LOGIT_COPIES),
        "kv_cache_bytes": kv_cache_bytes(s, sequences, length, p) + logits_bytes(s, sequences, 1, 2),
        "forward_logits_bytes": logits_bytes(s, rows, Tn, FORWARD_LOGIT_COPIES),
    }


def peak_bytes(models: list[dict[str, Any]], phases: dict[str, int], overhead: int) -> int:
    """Static (weights, gradients, optimizer) + the largest phase: training, generation or a no-grad pass."""
    static = sum(m["weights_bytes"] + m["gradients_bytes"] + m["optimizer_bytes"] for m in models)
    transient = max(
        phases["activations_bytes"] + phases["logits_bytes"],
        phases["kv_cache_bytes"],
        phases.get("forward_logits_bytes", 0),
    )
    return overhead + static + transient


def step_flops(algorithm: Algorithm, x: PlanInput, checkpointing: bool) -> dict[str, float]:
    """FLOPs of one optimizer step: 6·N·tokens to train (4·N with LoRA: no weight gradients of the frozen
    base; +2·N with gradient checkpointing), 2·N·tokens for forward-only passes; N counts matmul parameters.
    Offline, the checkpointed log-prob chunks run the vocabulary head once more per completion token."""
    s = x.shape
    n = s.matmul_params("score" if algorithm == "reward" else "lm")
    recompute = 2 * n if checkpointing else 0
    train_per_token = (4 if x.lora is not None else 6) * n + recompute
    T, Tp, Tn = x.max_length, x.max_prompt_length, x.max_new_tokens
    if algorithm in ("dpo", "reward", "sft"):
        rows = x.batch_size * (2 if algorithm in ("dpo", "reward") else 1)
        tokens = rows * T
        forward = 2 * n * tokens if algorithm == "dpo" and not x.precompute_ref_logps else 0
        head = 0 if algorithm == "reward" else 2 * s.embedding_params * rows * max(T - Tp, 1)
        return {"train": train_per_token * tokens + head, "forward": forward, "prefill": 0.0}
    sequences = x.batch_size * (x.num_generations if algorithm == "grpo" else 1)
    tokens = sequences * (Tp + Tn)
    rm = sum(2 * r.matmul_params("score") for r in x.reward_shapes) * tokens
    if algorithm == "grpo":
        ref = 2 * n * tokens if x.grpo_beta_positive else 0
        return {"train": train_per_token * tokens, "forward": ref + rm, "prefill": 2 * n * sequences * Tp}
    value_n = s.matmul_params("score") if x.ppo_value_model == "separate" else 0
    rollout = 2 * (n + value_n) * tokens + 2 * n * tokens  # old log-probs + values, reference
    train = x.ppo_epochs * (train_per_token + 6 * value_n) * tokens
    return {"train": train, "forward": rollout + rm, "prefill": 2 * n * sequences * Tp}


def step_seconds(algorithm: Algorithm, x: PlanInput, hw: Hardware, flops: dict[str, float]) -> dict[str, float]:
    """Seconds per optimizer step: FLOPs / (peak x efficiency) (split over GPUs for the data-parallel
    offline algorithms) plus, for online ones, generation: Tn decode steps, each bounded by reading
    every weight once (bytes / bandwidth) or by its FLOPs, whichever is slower."""
    rate = hw.flops * hw.efficiency
    devices = hw.count if algorithm in ("dpo", "reward", "sft") else 1
    compute = (flops["train"] + flops["forward"] + flops["prefill"]) / (rate * devices)
    generation = 0.0
    if algorithm in ("grpo", "ppo"):
        sequences = x.batch_size * (x.num_generations if algorithm == "grpo" else 1)
        weight_bytes = x.shape.params("lm") * x.param_bytes
        per_token = max(
            weight_bytes / (hw.bandwidth_bytes * hw.efficiency), 2 * x.shape.matmul_params() * sequences / rate
        )
        generation = x.max_new_tokens * per_token
    return {"compute_seconds": compute, "generation_seconds": generation, "seconds_per_step": compute + generation}


def estimate_plan(algorithm: Algorithm, x: PlanInput, hw: Hardware) -> dict[str, Any]:
    """Everything the planner answers for one algorithm (plain JSON-able dict)."""
    notes: list[str] = list(hw.notes)
    micro = offline_micro_batch(algorithm, x, hw)
    if x.batch_size % micro:
        raise ValueError("batch_size must be a multiple of micro_batch_size")
    if algorithm == "ppo":
        micro = min(micro, x.batch_size // x.num_minibatches)
    models = models_in_memory(algorithm, x)
    static = sum(m["weights_bytes"] + m["gradients_bytes"] + m["optimizer_bytes"] for m in models)
    ckpt = checkpointing_in_effect(algorithm, x, micro, hw.memory_bytes - hw.overhead_bytes - static)
    phases = _phases(algorithm, x, micro, ckpt)
    peak = peak_bytes(models, phases, hw.overhead_bytes)
    with_ckpt = _phases(algorithm, x, micro, True)["activations_bytes"]
    without_ckpt = _phases(algorithm, x, micro, False)["activations_bytes"]
    memory = {
        "weights_bytes": sum(m["weights_bytes"] for m in models),
        "gradients_bytes": sum(m["gradients_bytes"] for m in models),
        "optimizer_bytes": sum(m["optimizer_bytes"] for m in models),
        "activations_bytes": phases["activations_bytes"],
        "activations_with_checkpointing_bytes": with_ckpt,
        "activations_without_checkpointing_bytes": without_ckpt,
        "logits_bytes": phases["logits_bytes"],
        "kv_cache_bytes": phases["kv_cache_bytes"],
        "overhead_bytes": hw.overhead_bytes,
        "peak_bytes": peak,
        "available_bytes": hw.memory_bytes,
    }

    def largest(checkpointing: bool) -> int | None:
        limit = x.batch_size // x.num_minibatches if algorithm == "ppo" else x.batch_size
        for m in _divisors_desc(limit):
            if (
                x.batch_size % m == 0
                and peak_bytes(models, _phases(algorithm, x, m, checkpointing), hw.overhead_bytes) <= hw.memory_bytes
            ):
                return m
        return None

    if algorithm in ("grpo", "ppo") and hw.count > 1:
        notes.append(f"{algorithm} runs in one process: it uses 1 of the {hw.count} devices")
    flops = step_flops(algorithm, x, ckpt)
    time = step_seconds(algorithm, x, hw, flops)
    return {
        "algorithm": algorithm,
        "models": models,
        "memory": memory,
        "fits": peak <= hw.memory_bytes,
        "micro_batch_size": micro,
        "gradient_checkpointing": ckpt,
        "largest_micro_batch_size": largest(ckpt),
        "largest_micro_batch_size_with_checkpointing": largest(True),
        "time": {"flops_per_step": sum(flops.values()), **time, "efficiency": hw.efficiency},
        "notes": notes,
    }


# --- the recommendation ----------------------------------------------------------------------------

Situation = Literal["preference_pairs", "reward_model", "verifiable_rules"]
PREFERENCE: dict[str, list[Algorithm]] = {
    "preference_pairs": ["dpo", "reward", "grpo", "ppo", "sft"],
    "reward_model": ["grpo", "ppo", "dpo", "sft", "reward"],
    "verifiable_rules": ["grpo", "ppo", "sft", "dpo", "reward"],
}
WHY: dict[str, str] = {
    "preference_pairs": "with preference pairs only, DPO is one stage and keeps one model in memory (reference "
    "log-probs precomputed); PPO/GRPO would first need a reward model trained on the same pairs (reward -> grpo)",
    "reward_model": "with a reward model, GRPO learns online from it with three models in memory and no value "
    "model; PPO adds a value model (per-token credit) at the cost of a fourth",
    "verifiable_rules": "with verifiable rules, GRPO scores its samples with the rules (no reward model in "
    "memory) and needs no labels; PPO would also train a value model",
}


def recommend(situation: Situation | None, plans: list[dict[str, Any]], x: PlanInput, hw: Hardware) -> dict[str, Any]:
    """Pick the algorithm the situation calls for among those that fit, and say what to change if none does."""
    by_name = {p["algorithm"]: p for p in plans}
    order = PREFERENCE[situation] if situation else sorted(by_name, key=lambda a: by_name[a]["memory"]["peak_bytes"])
    ideal = order[0]
    fitting = [a for a in order if a in by_name and _feasible(by_name[a])]
    reasons: list[str] = [WHY[situation]] if situation else ["no situation given: the cheapest plan that fits"]
    if ideal not in by_name:
        reasons.append(f"{ideal} was not among the planned algorithms; plan it too to compare")
    if not fitting:
        fixes = []
        if x.lora is None:
            fixes.append("LoRA (lora: {r: 16})")
        if x.precision == "fp32" and hw.kind == "gpu":
            fixes.append("precision bf16")
        fixes.append("shorter sequences")
        if hw.kind == "gpu":
            fixes.append("a GPU with more memory")
        return {
            "algorithm": None,
            "text": "nothing planned fits this hardware, even at micro_batch_size 1 with gradient checkpointing; try "
            + ", ".join(fixes),
            "reasons": reasons,
        }
    choice = fitting[0]
    plan = by_name[choice]
    devices = f"{hw.count} x {hw.name}" if hw.kind == "gpu" else "the CPU"
    peak = f"{plan['memory']['peak_bytes'] / GIB:.1f} GiB of {hw.memory_bytes / GIB:.0f} GiB"
    seconds = f"about {plan['time']['seconds_per_step']:.3g} s per step"
    if plan["fits"]:
        text = f"{choice} on {devices}: peak {peak}, {seconds}"
        if plan["largest_micro_batch_size"] and plan["largest_micro_batch_size"] > plan["micro_batch_size"]:
            text += f"; micro_batch_size up to {plan['largest_micro_batch_size']} fits"
    elif plan["largest_micro_batch_size"]:
        text = (
            f"{choice} on {devices} with micro_batch_size {plan['largest_micro_batch_size']} "
            f"(as asked its peak is {peak}), {seconds}"
        )
    else:
        text = (
            f"{choice} on {devices} with gradient_checkpointing and micro_batch_size "
            f"{plan['largest_micro_batch_size_with_checkpointing']} (as asked its peak is {peak}), {seconds} "
            "plus about a third for the recomputation"
        )
    if choice != ideal and ideal in by_name:
        reasons.append(
            f"{ideal} does not fit even at micro_batch_size 1 with gradient checkpointing "
            f"(as asked: peak {by_name[ideal]['memory']['peak_bytes'] / GIB:.1f} GiB)"
        )
    if choice in ("grpo", "ppo") and hw.count > 1:
        reasons.append(f"{choice} uses one GPU per job; the others can run other jobs")
    return {"algorithm": choice, "text": text, "reasons": reasons}


def _feasible(plan: dict[str, Any]) -> bool:
    """Fits as asked, or with a smaller micro-batch, or with gradient checkpointing too."""
    return bool(plan["fits"] or plan["largest_micro_batch_size"] or plan["largest_micro_batch_size_with_checkpointing"])
