#!/usr/bin/env bash
# The GPU paths, on a lent GPU machine (never in CI; no test needs a GPU). From the repository root:
#   bash bench/gpu_check.sh OUT_DIR
# 1. bench/gpu_check.py: DPO, reward, SFT, GRPO, PPO in bf16 on one CUDA device and TRL's DPO/GRPO on
#    the same card (SmolLM2-135M's shape); 2. bench/gpu_service.py: a DPO job through `alignd serve`
#    with its embedded worker on CUDA; 3. the five algorithms again at SmolLM2-360M's shape, for the
#    planner's validation (bench/plan_gpu_compare.py reads OUT/plan_runs*.json here afterwards).
# Wheels the machine lacks travel in .whl/ (pip download on a machine with the registry: transformers,
# peft, trl, datasets, pydantic, orjson, google-re2, the service's packages); the models' configs and
# tokenizer in .gpu/ (random weights: they time the same as real ones). Each part has its own time limit
# so that one part that hangs leaves time for the others. MODEL / MODEL2 / STEPS override for a dry run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_check.sh OUT_DIR}
if [ -z "${NO_WHL:-}" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD${EXTRA_PATH:+:$EXTRA_PATH}
else
  export PYTHONPATH=$PWD${EXTRA_PATH:+:$EXTRA_PATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
model=${MODEL:-.gpu/smollm2} model2=${MODEL2:-.gpu/smollm2-360m} steps=${STEPS:-10}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
python3 -c "import torch, transformers, peft, accelerate, trl; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, trl.__version__)"
echo "== 1. algorithms and TRL ($(date +%T))"
timeout ${T1:-330} python3 bench/gpu_check.py --model "$model" --out "$out" --steps "$steps" --online-steps 5 --timeout 110
echo "== 2. a job through the service ($(date +%T))"
timeout ${T2:-150} python3 bench/gpu_service.py --model /tmp/alignd-gpu-check/default/model --out "$out" --steps "$steps" --timeout 120
echo "== 3. planner validation, second size ($(date +%T))"
timeout ${T3:-150} python3 bench/gpu_check.py --model "$model2" --out "$out" --tag 360m --steps 5 --online-steps 3 \
  --only dpo,reward,sft,grpo,ppo --timeout 60
echo "== done ($(date +%T))"
