#!/usr/bin/env bash
# `make bench`: alignd vs TRL on the same model, data and machine, each comparison in one run.
#   bash bench/run.sh            # the measured scale: about 30-45 min on a quiet 2-core CPU box
#   bash bench/run.sh --quick    # smoke scale: proves every path runs, numbers mean little
# Every script prints its table; results land in bench/out/*.json. Run it on a quiet machine (the
# load average is printed before and after) and say which machine gave the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
bash bench/setup-trl.sh >/dev/null
mkdir -p bench/out
quick=0
[ "${1:-}" = "--quick" ] && quick=1

step() {
  echo
  echo "== $* ($(date +%T), load:$(cut -d' ' -f1-3 /proc/loadavg))"
  "$PY" "$@"
}

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load:$(cut -d' ' -f1-3 /proc/loadavg)"
step bench/matmul.py
if [ "$quick" = 1 ]; then
  # Orca pairs are 200-2,000 tokens, so Orca stays at max_length 1024 even here (at 256 every pair
  # would be cut and our trainer refuses such a file); HH-RLHF pairs are short enough for 256.
  step bench/offline_vs_trl.py --algorithm dpo --data orca --lora --steps 2 --batch-size 1 --eval-pairs 2
  step bench/offline_vs_trl.py --algorithm dpo --data hh --full --steps 2 --batch-size 1 --max-length 256 --eval-pairs 2
  step bench/offline_vs_trl.py --algorithm reward --data hh --lora --steps 2 --batch-size 1 --max-length 256 --eval-pairs 2
  step bench/offline_vs_trl.py --algorithm reward --data orca --full --steps 2 --batch-size 1 --eval-pairs 2
  step bench/grpo_vs_trl.py --steps 2 --prompts-per-step 1 --generations 2 --max-new-tokens 16
else
  step bench/offline_vs_trl.py --algorithm dpo --data orca --lora --steps 5 --batch-size 2 --eval-pairs 4
  step bench/offline_vs_trl.py --algorithm dpo --data orca --full --steps 5 --batch-size 2 --eval-pairs 4
  step bench/offline_vs_trl.py --algorithm reward --data hh --lora --steps 6 --batch-size 4 --eval-pairs 8
  step bench/offline_vs_trl.py --algorithm reward --data hh --full --steps 6 --batch-size 4 --eval-pairs 8
  step bench/grpo_vs_trl.py --steps 4 --prompts-per-step 2 --generations 4 --max-new-tokens 64
  # TRL's true default precision (bf16 autocast on CPU), one tiny run beside its fp32 run, to test
  # the claim that it is far slower on this CPU (why every other TRL run here is fp32): on a CPU
  # with AVX512-BF16/AMX it may not be; see README, Precision.
  step bench/offline_vs_trl.py --algorithm dpo --data hh --lora --mode defaults --steps 2 --batch-size 1 \
    --max-length 256 --eval-pairs 2 --trl-bf16
fi
echo
echo "done ($(date +%T), load:$(cut -d' ' -f1-3 /proc/loadavg)); results in bench/out/*.json"
