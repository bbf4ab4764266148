#!/usr/bin/env bash
# The rollout engines on a lent GPU (never in CI). From the repository root, with the wheels in .whl/
# and SmolLM2's config and tokenizer in .gpu/smollm2 (as bench/gpu_check.sh):
#   bash bench/gpu_rollout.sh OUT_DIR
# 1. bench/rollout_speed.py in bf16 on cuda (8 prompts x G=8, 128 new tokens, random weights: no EOS,
#    so every row runs to the limit); 2. GRPO for 4 steps with each engine through the trainer CLI.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_rollout.sh OUT_DIR}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=$out
work=/tmp/rollout-gpu && mkdir -p $work
model=$(python3 -c "import sys; from pathlib import Path; sys.path.insert(0, 'bench'); from gpu_check import model_folder; print(model_folder(Path('.gpu/smollm2'), Path('$work')))")
prompts=$(python3 -c "import sys; from pathlib import Path; sys.path.insert(0, 'bench'); from gpu_check import gsm8k_prompts; print(gsm8k_prompts(Path('$work'), 64))")
python3 bench/rollout_speed.py --model "$model" --device cuda --dtype bfloat16 --prompts 8 --generations 8 \
  --new-tokens 128 --repeats 3 --threads 8 2>&1 | tee "$out/rollout_speed.log"
for engine in cached generate; do
  cat > $work/grpo-$engine.json <<JSON
{"algorithm": "grpo", "base_model": "$model", "train_file": "$prompts", "seed": 0,
 "reward": [{"type": "rule", "rule": "regex", "pattern": "[aeiou]"}],
 "hyperparameters": {"batch_size": 8, "num_generations": 8, "max_new_tokens": 128, "max_steps": 4,
  "precision": "bf16", "generation_engine": "$engine", "max_prompt_length": 256, "max_length": 512}}
JSON
  python3 -m trainer run $work/grpo-$engine.json --output $work/grpo-$engine --events "$out/grpo-$engine.jsonl" \
    > "$out/grpo-$engine.log" 2>&1; echo "grpo $engine exit $?"
  python3 - "$out/grpo-$engine.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["type"] == "metrics":
        v = e["values"]
        print(e["step"], {k: round(v[k], 3) for k in ("loss", "time/generation", "step_time", "completions/mean_length") if k in v})
    if e["type"] == "error":
        print(e)
PY
done
