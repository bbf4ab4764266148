"""bench/gpu_memory_profile.py: what a step saves for backward, by module type, and what the CUDA allocator
holds at its peak (replayed from a trace), beside the planner's terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import gpu_memory_profile as profile
from tests.tiny import build_tiny_model


def test_saved_tensors_are_grouped_by_module_and_leave_the_live_total_after_backward() -> None:
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
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    independent: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:  # test_plan.py's count: every non-parameter storage saved
        if t.untyped_storage().data_ptr() not in params:
            independent[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 256, (4, 96))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    with profile.SavedTensors() as saved:
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        alive_after_forward = saved.live_bytes
        loss.backward()
        del loss
    report = saved.report()
    assert saved.peak_bytes == alive_after_forward == sum(independent.values())
    assert saved.live_bytes == ids.untyped_storage().nbytes()  # the rest freed with the graph; the test holds ids
    groups = {(r["group"], r["dtype"]) for r in report["alive_at_peak"]}
    assert {("LlamaRMSNorm", "float32"), ("Linear", "bfloat16"), ("LlamaForCausalLM", "float32")} <= groups
    assert report["parameter_saves_left_out"] > 0


def test_the_allocator_trace_is_replayed_to_the_blocks_alive_at_its_peak() -> None:
    root = str(profile.ROOT)

    def alloc(addr: int, size: int, where: str) -> dict[str, Any]:
        frames = [
            {"filename": "/x/site-packages/torch/nn/functional.py", "line": 1, "name": "linear"},
            {"filename": f"{root}/trainer/{where}.py", "line": 7, "name": where},
        ]
        return {"action": "alloc", "addr": addr, "size": size, "frames": frames}

    def free(addr: int, size: int, action: str) -> dict[str, Any]:
        return {"action": action, "addr": addr, "size": size, "frames": []}

    trace = [
        alloc(1, 100 * profile.MIB, "logprobs"),
        alloc(2, 50 * profile.MIB, "dpo"),
        free(1, 100 * profile.MIB, "free_requested"),  # not reusable until completed: still counted
        alloc(3, 30 * profile.MIB, "dpo"),
        free(1, 100 * profile.MIB, "free_completed"),
        alloc(4, 60 * profile.MIB, "losses"),
    ]
    found = profile.alive_at_peak({"device_traces": [trace]}, 0, 10 * profile.MIB, top=5)
    assert found["peak_allocated_mb"] == 190.0  # 10 before recording + 100 + 50 + 30
    assert [b["mb"] for b in found["largest"]] == [100.0, 50.0, 30.0]
    assert found["largest"][0] == {
        "mb": 100.0,
        "alignd": "trainer/logprobs.py:7 logprobs",
        "library": "torch/nn/functional.py:1 linear",
    }
    assert found["by_alignd_frame"][0] == {"frame": "trainer/logprobs.py:7 logprobs", "mb": 100.0}
    assert {"frame": "trainer/dpo.py:7 dpo", "mb": 80.0} in found["by_alignd_frame"]


def test_one_dpo_step_on_cpu_reports_its_saved_tensors_beside_the_planners_terms(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    result = profile.profile("dpo", model, tmp_path / "work", gpu="H200")
    assert result["rc"] == 0 and result["errors"] == []
    assert result["device"] == "cpu" and "allocator" not in result
    saved = result["saved_for_backward"]
    assert 0 < saved["peak_alive_mb"] <= saved["saved_during_run_mb"]
    assert {"weights", "activations", "logits", "peak"} <= set(result["planner"]["terms_mb"])
    text = profile.text(result)
    assert "Saved for backward, alive together at their peak" in text and "LlamaRMSNorm" in text
