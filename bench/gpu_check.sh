#!/usr/bin/env bash
# The GPU paths, on a lent GPU machine (never in CI; no test needs a GPU). From the repository root:
#   bash bench/gpu_check.sh OUT_DIR [extra args for bench/gpu_check.py]
# Wheels the machine lacks travel in .whl/ (pip download on a machine with the registry: transformers,
# peft, trl, datasets, pydantic, orjson, google-re2, ...); the model's config and tokenizer in .gpu/smollm2.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_check.sh OUT_DIR}; shift
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__)"
python3 bench/gpu_check.py --model "${MODEL:-.gpu/smollm2}" --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
