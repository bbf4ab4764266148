"""POST /v1/plan: memory, fit, step time and a recommendation before training (docs/plan.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.core.settings import Settings
from api.plan import estimate
from api.plan.estimate import Hardware, Lora, PlanInput, activations_bytes, estimate_plan, shape_from_config
from tests.api.helpers import assert_error
from tests.hub_cache import cached_hub_model
from trainer.config import activation_bytes_per_token, auto_checkpoints

ROOT = Path(__file__).resolve().parents[2]

LLAMA_8B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}
QWEN_05B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}
ALL = ["dpo", "reward", "sft", "grpo", "ppo"]


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the planner touches no table but the API keys'


def add_model(settings: Settings, name: str, config: dict[str, Any]) -> None:
    """A model-directory entry with a config.json and no weights at all: the planner reads nothing else."""
    folder = settings.resolved_models_dir / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
def models(settings: Settings) -> Settings:
    add_model(settings, "llama-8b", LLAMA_8B)
    add_model(settings, "qwen-0.5b", QWEN_05B)
    return settings


def body(**fields: Any) -> dict[str, Any]:
    return {
        "base_model": "qwen-0.5b",
        "algorithms": ALL,
        "hardware": {"kind": "gpu", "gpu": "H100"},
        **fields,
    }


def plan(client: TestClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    resp = client.post("/v1/plan", headers=auth, json=body(**fields))
    assert resp.status_code == 200, resp.text
    return resp.json()


def by_algorithm(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["algorithm"]: p for p in answer["plans"]}


def roles(p: dict[str, Any]) -> dict[str, str]:
    return {m["role"]: m["kind"] for m in p["models"]}


def test_each_algorithm_is_answered_with_the_models_it_keeps_and_their_bytes(
    client: TestClient, auth: dict[str, str], models: Settings
) -> None:
    answer = plan(client, auth, data="reward_model")
    plans = by_algorithm(answer)
    assert list(plans) == ALL
    assert answer["model"]["params"] == 494_032_768  # Qwen2.5-0.5B's published count (tied embeddings)
    assert roles(plans["dpo"]) == {"policy": "trained in full", "reference": "precomputed log-probs (no model)"}
    assert set(roles(plans["grpo"])) == {"policy", "reference", "reward model 1"}
    assert roles(plans["grpo"])["reference"] == "frozen copy of the base"
    assert set(roles(plans["ppo"])) == {"policy", "reference", "reward model 1", "value"}
    assert set(roles(plans["sft"])) == {"policy"} and set(roles(plans["reward"])) == {"reward model (trained)"}
    for p in plans.values():
        m = p["memory"]
        static = sum(x["weights_bytes"] + x["gradients_bytes"] + x["optimizer_bytes"] for x in p["models"])
        assert m["weights_bytes"] + m["gradients_bytes"] + m["optimizer_bytes"] == static
        assert m["peak_bytes"] >= static + m["overhead_bytes"] + m["activations_bytes"] + m["logits_bytes"]
        assert m["optimizer_bytes"] == 2 * m["gradients_bytes"]  # AdamW: two states per trainable parameter
        assert m["activations_with_checkpointing_bytes"] < m["activations_without_checkpointing_bytes"]
        assert p["time"]["seconds_per_step"] > 0 and p["time"]["flops_per_step"] > 0
    # Online algorithms hold a generation KV cache and spend time generating; offline ones do not.
    assert plans["grpo"]["memory"]["kv_cache_bytes"] > 0 and plans["grpo"]["time"]["generation_seconds"] > 0
    assert plans["dpo"]["memory"]["kv_cache_bytes"] == 0 and plans["dpo"]["time"]["generation_seconds"] == 0
    # Four models > three > one: PPO's weights exceed GRPO's, which exceed DPO's.
    weights = {a: p["memory"]["weights_bytes"] for a, p in plans.items()}
    assert weights["ppo"] > weights["grpo"] > weights["dpo"]


def test_lora_needs_less_memory_than_full_and_its_reference_is_the_base_with_adapters_off(
    client: TestClient, auth: dict[str, str], models: Settings
) -> None:
    full = by_algorithm(plan(client, auth))
    lora = by_algorithm(plan(client, auth, lora={"r": 16, "target_modules": ["q_proj", "v_proj"]}))
    for algorithm in ALL:
        assert lora[algorithm]["memory"]["peak_bytes"] < full[algorithm]["memory"]["peak_bytes"], algorithm
        assert lora[algorithm]["memory"]["optimizer_bytes"] < full[algorithm]["memory"]["optimizer_bytes"] / 50
    assert roles(lora["grpo"])["reference"] == "the base with adapters disabled (no copy)"
    # Qwen2.5-0.5B, r=16 on q_proj and v_proj: 24 layers x 16 x ((896 + 896) + (896 + 128)).
    assert lora["sft"]["models"][0]["trainable_params"] == 24 * 16 * (896 + 896 + 896 + 128)


def test_bf16_needs_less_memory_than_fp32(client: TestClient, auth: dict[str, str], models: Settings) -> None:
    # at a fixed checkpointing setting ("auto" checkpoints fp32 here, where it leaves bf16 alone)
    fp32 = by_algorithm(plan(client, auth, precision="fp32", gradient_checkpointing=True))
    bf16 = by_algorithm(plan(client, auth, precision="bf16", gradient_checkpointing=True))
    for algorithm in ALL:
        assert bf16[algorithm]["models"][0]["weights_bytes"] * 2 == fp32[algorithm]["models"][0]["weights_bytes"]
        assert bf16[algorithm]["memory"]["peak_bytes"] < fp32[algorithm]["memory"]["peak_bytes"]
        # and it is faster: H100's bf16 tensor cores against plain fp32
        assert bf16[algorithm]["time"]["seconds_per_step"] < fp32[algorithm]["time"]["seconds_per_step"]


def test_fits_and_the_largest_micro_batch_agree_with_plans_at_that_micro_batch(
    client: TestClient, auth: dict[str, str], models: Settings
) -> None:
    settings: dict[str, Any] = {"base_model": "llama-8b", "algorithms": ["sft"], "batch_size": 64, "max_length": 2048}
    settings |= {"lora": {"r": 16}, "gradient_checkpointing": False}
    hardware = {"kind": "gpu", "gpu": "A100-40GB"}
    answer = plan(client, auth, **settings, hardware=hardware)
    sft = answer["plans"][0]
    largest = sft["largest_micro_batch_size"]
    assert sft["fits"] is False and largest is not None and 1 <= largest < 64
    at_largest = plan(client, auth, **settings, hardware=hardware, micro_batch_size=largest)["plans"][0]
    assert at_largest["fits"] is True
    assert at_largest["memory"]["peak_bytes"] <= at_largest["memory"]["available_bytes"]
    above = plan(client, auth, **settings, hardware=hardware, micro_batch_size=largest * 2)["plans"][0]
    assert above["fits"] is False
    # Gradient checkpointing lets a larger micro-batch fit.
    assert sft["largest_micro_batch_size_with_checkpointing"] > largest
    # Full fp32 fine-tuning of 8B parameters fits no single A100-40GB, at any micro-batch.
    nothing = plan(client, auth, **{**settings, "lora": None}, hardware=hardware, precision="fp32")
    assert nothing["plans"][0]["largest_micro_batch_size"] is None
    assert nothing["recommendation"]["algorithm"] is None and "LoRA" in nothing["recommendation"]["text"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [("preference_pairs", "dpo"), ("reward_model", "grpo"), ("verifiable_rules", "grpo")],
)
def test_the_recommendation_follows_the_users_situation(
    client: TestClient, auth: dict[str, str], models: Settings, data: str, expected: str
) -> None:
    answer = plan(client, auth, data=data, lora={"r": 16})
    assert answer["recommendation"]["algorithm"] == expected
    assert expected in answer["recommendation"]["text"]
    grpo = by_algorithm(answer)["grpo"]
    if data == "verifiable_rules":  # rules score the samples: no reward model in memory
        assert roles(grpo)["reward"] == "rules (no model)"
    else:
        assert "reward model 1" in roles(grpo)


def test_the_recommendation_falls_back_to_what_fits(client: TestClient, auth: dict[str, str], models: Settings) -> None:
    # Full bf16 GRPO on 8B keeps policy + AdamW (64 GiB) and a frozen reference (15 GiB): over an H100's
    # 80 GiB at any micro-batch. SFT without gradient checkpointing drops the reference and fits with a
    # smaller micro-batch.
    answer = plan(
        client,
        auth,
        base_model="llama-8b",
        algorithms=["grpo", "sft"],
        data="verifiable_rules",
        gradient_checkpointing=False,
    )
    plans = by_algorithm(answer)
    assert plans["grpo"]["largest_micro_batch_size_with_checkpointing"] is None
    assert plans["sft"]["fits"] is False and plans["sft"]["largest_micro_batch_size_with_checkpointing"]
    recommendation = answer["recommendation"]
    assert recommendation["algorithm"] == "sft"
    assert "micro_batch_size" in recommendation["text"]
    assert any("grpo does not fit" in reason for reason in recommendation["reasons"])
    # The same GRPO with LoRA fits: it is recommended, with the micro-batch that fits.
    lora = plan(
        client, auth, base_model="llama-8b", algorithms=["grpo", "sft"], data="verifiable_rules", lora={"r": 16}
    )
    assert lora["recommendation"]["algorithm"] == "grpo"


def test_several_gpus_split_an_offline_step_but_grpo_uses_one(
    client: TestClient, auth: dict[str, str], models: Settings
) -> None:
    one = by_algorithm(plan(client, auth, algorithms=["dpo", "grpo"]))
    four = by_algorithm(
        plan(client, auth, algorithms=["dpo", "grpo"], hardware={"kind": "gpu", "gpu": "H100", "count": 4})
    )
    assert four["dpo"]["time"]["compute_seconds"] == pytest.approx(one["dpo"]["time"]["compute_seconds"] / 4)
    assert four["grpo"]["time"]["seconds_per_step"] == pytest.approx(one["grpo"]["time"]["seconds_per_step"])
    assert any("one process" in note for note in four["grpo"]["notes"])


def test_a_cpu_machine_is_planned_with_its_memory_and_given_throughput(
    client: TestClient, auth: dict[str, str], models: Settings
) -> None:
    answer = plan(client, auth, algorithms=["dpo"], hardware={"kind": "cpu", "memory_gb": 16, "flops": 1e11})
    assert answer["hardware"]["memory_bytes"] == 16 * 2**30 and answer["hardware"]["flops"] == 1e11
    assert answer["hardware"]["overhead_bytes"] == 402 * 2**20  # the trainer's measured CPU baseline
    measured = plan(client, auth, algorithms=["dpo"], hardware={"kind": "cpu", "memory_gb": 16})
    assert measured["hardware"]["flops"] > 1e8
    assert any("measured on the API host" in a for a in measured["assumptions"])


def test_a_hub_model_is_planned_from_its_cached_config_and_refused_without_one(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    assert settings.hub_cache_dir is not None
    snapshot = cached_hub_model(settings.hub_cache_dir, "org/qwen")
    (snapshot / "config.json").write_text(json.dumps(QWEN_05B))
    assert plan(client, auth, base_model="org/qwen")["model"]["params"] == 494_032_768
    resp = client.post("/v1/plan", headers=auth, json=body(base_model="org/not-cached"))
    assert_error(resp, 422, "invalid_model", "base_model")
    assert "hub cache" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"base_model": "no-such-model"}, "base_model"),
        ({"base_model": "/etc/passwd"}, "base_model"),
        ({"base_model": "job:123"}, "base_model"),
        ({"reward_models": ["missing-rm"]}, "reward_models[0]"),
    ],
)
def test_an_unknown_or_unplannable_model_is_a_422(
    client: TestClient, auth: dict[str, str], models: Settings, fields: dict[str, Any], param: str
) -> None:
    assert_error(client.post("/v1/plan", headers=auth, json=body(**fields)), 422, "invalid_model", param)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"algorithm": "dpo"}, "algorithm"),  # unknown field
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10**6}, "batch_size"),
        ({"batch_size": "8"}, "batch_size"),
        ({"max_length": True}, "max_length"),
        ({"algorithms": []}, "algorithms"),
        ({"algorithms": ["dpo", "dpo"]}, None),
        ({"algorithms": ["rlhf"]}, "algorithms[0]"),
        ({"hardware": {"kind": "gpu", "gpu": "V100"}}, "hardware.gpu"),
        ({"hardware": {"kind": "gpu", "gpu": "H100", "count": 65}}, "hardware.count"),
        ({"hardware": {"kind": "gpu", "gpu": "H100", "vram": 80}}, "hardware.vram"),
        ({"hardware": {"kind": "gpu"}}, "hardware"),
        ({"hardware": {"kind": "cpu"}}, "hardware"),
        ({"lora": {"r": 16, "rank": 16}}, "lora.rank"),
        ({"micro_batch_size": 3}, None),
        ({"max_prompt_length": 2048}, None),
    ],
)
def test_the_request_is_strict_and_bounded(
    client: TestClient, auth: dict[str, str], models: Settings, fields: dict[str, Any], param: str | None
) -> None:
    resp = client.post("/v1/plan", headers=auth, json=body(**fields))
    assert_error(resp, 422, "invalid_request")
    if param is not None:
        assert resp.json()["error"]["param"] == param


def test_plan_needs_an_api_key(client: TestClient, models: Settings) -> None:
    assert_error(client.post("/v1/plan", json=body()), 401)


# --- the estimator, without the API ----------------------------------------------------------------


def test_the_estimator_imports_no_torch() -> None:
    code = "import sys, api.plan.estimate, api.plan.schemas; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT)})


def test_parameter_counts_match_the_models_transformers_builds() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        num_labels=1,
    )
    shape = shape_from_config(config.to_dict())
    assert shape.params("lm") == sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert shape.params("score") == sum(p.numel() for p in LlamaForSequenceClassification(config).parameters())
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert shape.lora_params(4, "all-linear") == trainable


def test_kv_cache_and_logits_follow_their_formulas() -> None:
    shape = shape_from_config(LLAMA_8B)
    x = PlanInput(
        shape=shape,
        precision="bf16",
        lora=Lora(16),
        max_prompt_length=256,
        max_new_tokens=256,
        batch_size=4,
        num_generations=8,
        reward_rules_only=True,
    )
    grpo = estimate_plan("grpo", x, Hardware.gpu("H200"))
    # 2 (K and V) x 32 layers x 8 KV heads x 128 x 32 sequences x 512 positions x 2 bytes
    kv = 2 * 32 * 8 * 128 * 32 * 512 * 2
    assert grpo["memory"]["kv_cache_bytes"] == kv + 32 * 128256 * 4 * 2  # + last-position logits while sampling
    # micro-batch 4 prompts x 8 = 32 rows x 256 completion positions x V x fp32, three copies
    assert grpo["memory"]["logits_bytes"] == 32 * 256 * 128256 * 4 * 3


def test_offline_log_probs_count_one_chunk_of_logits_not_the_whole_batch() -> None:
    """The trainer never builds (B, T, V) logits offline (trainer.logprobs.batch_sequence_logps): the
    planner counts the completion hidden states and one chunk of CHUNK_ELEMENTS // V tokens' logits."""
    from trainer.logprobs import CHUNK_ELEMENTS

    assert CHUNK_ELEMENTS == estimate.CHUNK_ELEMENTS
    shape = shape_from_config(QWEN_05B)
    x = PlanInput(shape=shape, precision="bf16", max_length=1024, max_prompt_length=512, batch_size=8)
    dpo = estimate_plan("dpo", x, Hardware.gpu("H100"))
    positions = 8 * 2 * 512  # 8 pairs, chosen + rejected, 512 completion positions each
    chunk = 2**24 // 151936  # 110 tokens
    assert estimate.logprob_chunk_tokens(shape, positions) == chunk
    # hidden states in bf16 + one chunk: its bf16 logits and three fp32 copies in the chunk's backward,
    # + the head's V x h bf16 gradient a chunk's backward adds to the sum of the chunks before it
    expected = positions * 896 * 2 + chunk * 151936 * (2 + 3 * 4) + 151936 * 896 * 2
    assert dpo["memory"]["logits_bytes"] == expected
    full_logits = positions * 151936 * 4 * 3  # what the planner counted before: 14.9 GB
    assert dpo["memory"]["logits_bytes"] < full_logits / 25
    sft = estimate_plan("sft", x, Hardware.gpu("H100"))
    assert sft["memory"]["logits_bytes"] == (positions // 2) * 896 * 2 + chunk * 151936 * (2 + 3 * 4) + 151936 * 896 * 2
    lora = estimate_plan("dpo", replace(x, lora=Lora(16)), Hardware.gpu("H100"))  # a frozen head: no gradient
    assert lora["memory"]["logits_bytes"] == positions * 896 * 2 + chunk * 151936 * (2 + 3 * 4)
    assert estimate_plan("reward", x, Hardware.gpu("H100"))["memory"]["logits_bytes"] == 0
    # A completion span shorter than one chunk is one chunk of its own size (fp32: the upcast is the logits).
    small = PlanInput(shape=shape, precision="fp32", max_length=560, max_prompt_length=512, batch_size=1)
    positions = 2 * 48  # under the 110 tokens of a chunk
    assert estimate_plan("dpo", small, Hardware.gpu("H100"))["memory"]["logits_bytes"] == (
        positions * 896 * 4 + positions * 151936 * 3 * 4
    )


def test_a_reward_model_is_held_in_its_saved_dtype_whatever_the_jobs_precision() -> None:
    """trainer.rewards loads reward models without a dtype (transformers' "auto": as saved)."""
    policy = shape_from_config(QWEN_05B)
    saved_fp32 = shape_from_config({**QWEN_05B, "dtype": "float32"})
    saved_bf16 = shape_from_config({**QWEN_05B, "torch_dtype": "bfloat16"})
    n = policy.params("score")

    def rm_bytes(rm: Any) -> int:
        x = PlanInput(shape=policy, precision="bf16", reward_shapes=[rm])
        (model,) = [m for m in estimate_plan("ppo", x, Hardware.gpu("H100"))["models"] if m["role"] == "reward model 1"]
        return int(model["weights_bytes"])

    assert rm_bytes(saved_fp32) == 4 * n
    assert rm_bytes(saved_bf16) == rm_bytes(policy) == 2 * n  # unknown: the job's precision


def test_gradient_checkpointing_defaults_to_the_trainers_per_algorithm(
    client: TestClient, auth: dict[str, str], models: Settings
) -> None:
    plans = by_algorithm(plan(client, auth))
    asked = by_algorithm(plan(client, auth, gradient_checkpointing="auto"))
    for algorithm in ALL:  # offline: "auto" (its rule: the next test); online: off
        memory = plans[algorithm]["memory"]
        on = plans[algorithm]["gradient_checkpointing"]
        assert on is (asked[algorithm]["gradient_checkpointing"] if algorithm in ("dpo", "reward", "sft") else False)
        kept = memory["activations_with_checkpointing_bytes" if on else "activations_without_checkpointing_bytes"]
        assert memory["activations_bytes"] == kept
    assert plans["dpo"]["gradient_checkpointing"] is True  # 8 pairs of 2 x 1024 tokens: over half an H100
    small = by_algorithm(plan(client, auth, algorithms=["dpo"], micro_batch_size=1))["dpo"]
    assert small["gradient_checkpointing"] is False  # one pair of 2 x 1024 tokens: far below half an H100
    off = by_algorithm(plan(client, auth, algorithms=["dpo"], gradient_checkpointing=False))["dpo"]
    assert off["gradient_checkpointing"] is False
    assert off["memory"]["activations_bytes"] == off["memory"]["activations_without_checkpointing_bytes"]
    assert off["memory"]["peak_bytes"] > plans["dpo"]["memory"]["peak_bytes"]


@pytest.mark.parametrize("algorithm", ["dpo", "reward", "sft"])
def test_auto_checkpointing_is_planned_by_the_trainer_s_rule_for_a_micro_batch_at_max_length(algorithm: str) -> None:
    shape = shape_from_config(QWEN_05B)
    hw = Hardware.gpu("L4")  # 24 GiB
    rows = 2 if algorithm in ("dpo", "reward") else 1
    per_token = activation_bytes_per_token(shape.hidden_size, shape.intermediate_size, shape.num_layers, 2)
    for micro in (1, 2, 4, 8):
        x = PlanInput(shape=shape, batch_size=8, micro_batch_size=micro, max_length=1024, gradient_checkpointing="auto")
        plan = estimate_plan(algorithm, x, hw)
        static = sum(m["weights_bytes"] + m["gradients_bytes"] + m["optimizer_bytes"] for m in plan["models"])
        free = hw.memory_bytes - hw.overhead_bytes - static
        assert plan["gradient_checkpointing"] is auto_checkpoints(micro * rows * 1024, per_token, free)
    one = estimate_plan(algorithm, replace(x, micro_batch_size=1), hw)
    eight = estimate_plan(algorithm, replace(x, micro_batch_size=8), hw)
    assert (one["gradient_checkpointing"], eight["gradient_checkpointing"]) == (False, True)
    # on a CPU the trainer runs one example per pass unless told otherwise, and the plan says so
    cpu = estimate_plan(algorithm, replace(x, micro_batch_size=None), Hardware.cpu(64, 1e12, 400))
    assert cpu["micro_batch_size"] == 1 and cpu["gradient_checkpointing"] is False


def test_a_token_budget_caps_the_examples_of_one_pass() -> None:
    shape = shape_from_config(QWEN_05B)
    x = PlanInput(shape=shape, max_length=1024, max_prompt_length=512, batch_size=8, gradient_checkpointing=False)
    # 4096 tokens per pass: 2 pairs of 2 x 1024 tokens, whatever the micro-batch
    budget = estimate_plan("dpo", replace(x, max_tokens_per_batch=4096), Hardware.gpu("H100"))["memory"]
    two = estimate_plan("dpo", replace(x, micro_batch_size=2), Hardware.gpu("H100"))["memory"]
    eight = estimate_plan("dpo", x, Hardware.gpu("H100"))["memory"]
    assert budget["activations_bytes"] == two["activations_bytes"] < eight["activations_bytes"]
    assert budget["logits_bytes"] == two["logits_bytes"]
    # A budget below one example still runs one example per pass (trainer.packing.micro_batches).
    tiny = estimate_plan("dpo", replace(x, max_tokens_per_batch=16), Hardware.gpu("H100"))["memory"]
    one = estimate_plan("dpo", replace(x, micro_batch_size=1), Hardware.gpu("H100"))["memory"]
    assert tiny["activations_bytes"] == one["activations_bytes"]


def test_the_gpu_comparison_script_plans_each_run_beside_its_measured_peak(tmp_path: Path) -> None:
    """bench/plan_gpu_compare.py on a fabricated input: it runs and divides as it says (no GPU involved)."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN_05B))
    run = {"algorithm": "dpo", "spec": {"hyperparameters": {"batch_size": 4}}, "peak_gpu_mb": 5000}
    runs = {"runs": [{**run, "model_config": str(tmp_path / "config.json")}]}
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    out = subprocess.run(
        [sys.executable, "bench/plan_gpu_compare.py", str(tmp_path / "runs.json"), "--json"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = json.loads(out.stdout)
    x = PlanInput(shape=shape_from_config(QWEN_05B), batch_size=4)  # the job defaults: bf16, checkpointing auto
    planned = estimate_plan("dpo", x, Hardware.gpu("H100"))
    expected = planned["memory"]["peak_bytes"] / 2**20
    assert row["gradient_checkpointing"] is planned["gradient_checkpointing"]
    assert row["predicted_mb"] == pytest.approx(expected, abs=0.1)
    assert row["ratio"] == pytest.approx(5000 / row["predicted_mb"], abs=5e-4)  # rounded to 3 decimals


# --- validated against real runs (bench/plan_validation.py has the full table) ----------------------


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["dpo", "grpo"])
def test_predicted_peak_memory_is_within_tolerance_of_a_real_cpu_run(algorithm: str, tmp_path: Path) -> None:
    import importlib.util

    from tests.tiny import build_tiny_model

    spec = importlib.util.spec_from_file_location("plan_validation", ROOT / "bench" / "plan_validation.py")
    assert spec is not None and spec.loader is not None
    pv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pv)

    model = build_tiny_model(tmp_path / "model", **pv.SIZES["small"])
    data = pv.write_data(tmp_path)
    baseline = pv.measure_baseline_mb(model)
    measured = pv.run_trainer(algorithm, model, model, data, tmp_path / algorithm)
    config = json.loads((model / "config.json").read_text())
    predicted = pv.predict(algorithm, config, baseline)["memory"]["peak_bytes"] / 2**20
    assert pv.within(predicted, measured), (predicted, measured, baseline)


@pytest.mark.parametrize("lora", [None, Lora(8)], ids=["full", "lora"])
def test_activations_are_the_tensors_autograd_keeps(lora: Lora | None) -> None:
    """The activation formula against the bytes of every non-parameter tensor a training forward saves."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.config import LoraConfig
    from trainer.models import apply_lora

    config = LlamaConfig(
        vocab_size=260,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config).train()
    if lora is not None:
        model = apply_lora(model, LoraConfig(r=lora.r))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    rows, length = 4, 96
    ids = torch.randint(0, 256, (rows, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    shape = shape_from_config(config.to_dict())
    predicted = activations_bytes(shape, rows, length, 4, False, False, lora)
    assert predicted == pytest.approx(sum(saved.values()), rel=0.05)


def test_bf16_activations_count_the_fp32_copies_rmsnorm_keeps() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=260,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 256, (4, 96))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    predicted = activations_bytes(shape_from_config(config.to_dict()), 4, 96, 2, False, False)
    assert predicted == pytest.approx(sum(saved.values()), rel=0.05)


# --- opt-in: job creation refuses a job that cannot fit the workers' GPUs ---------------------------


def test_job_creation_refuses_a_job_over_the_workers_gpu_memory_only_when_configured(
    client: TestClient, auth: dict[str, str], models: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core import reset_caches
    from tests.api.helpers import real_lines, upload_ok

    dataset = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 2))
    full = {"algorithm": "dpo", "base_model": "llama-8b", "dataset_id": dataset["id"]}
    # Unset (the default): no check, the job is queued whatever its size.
    assert client.post("/v1/jobs", headers=auth, json=full).status_code == 201

    monkeypatch.setenv("ALIGND_WORKER_GPU_MEMORY_GB", "24")
    reset_caches()
    refused = client.post("/v1/jobs", headers=auth, json=full)
    assert_error(refused, 422, "job_does_not_fit", "hyperparameters")
    assert "24 GiB" in refused.json()["error"]["message"]
    # 8B in bf16 with LoRA, micro-batches of 1 and gradient checkpointing fits 24 GiB.
    small = {
        **full,
        "lora": {"r": 16},
        "hyperparameters": {"micro_batch_size": 1, "gradient_checkpointing": True, "max_length": 1024},
    }
    assert client.post("/v1/jobs", headers=auth, json=small).status_code == 201, "fits"
    # A model the planner cannot read (a hub id not in the hub cache) is not refused by the planner.
    unplannable = {**full, "base_model": "org/uncached"}
    assert client.post("/v1/jobs", headers=auth, json=unplannable).status_code == 201


def test_a_job_plan_falls_back_to_the_trainers_own_online_defaults() -> None:
    """job_plan_input fills what a job leaves out with trainer.config's defaults: GRPO loads no reference at
    beta 0, PPO runs its default number of epochs (the planner must follow when those defaults move)."""
    from api.plan.estimate import job_plan_input
    from trainer.config import GRPOConfig, PPOConfig

    hp = {"max_length": 512, "max_prompt_length": 256, "batch_size": 8}
    x = job_plan_input(shape_from_config(QWEN_05B), hp, None, [])
    assert x.grpo_beta_positive is (GRPOConfig.model_fields["beta"].default > 0)
    assert x.ppo_epochs == PPOConfig.model_fields["ppo_epochs"].default
